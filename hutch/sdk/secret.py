"""``hutch.Secret``: environment variables handed to a sandbox or an exec, Modal-style.

A secret is a client-side set of variables, merged into the environment of the sandbox
(``Sandbox.create(secrets=[...])``) or of one exec (``exec(..., secrets=[...])``), later
secrets and explicit ``env`` winning.  Its values never appear in a ``repr``, in verbose
lines or in the engine's log; only the variable names do.  The engine keeps a sandbox's
environment in its state database only while the sandbox runs (``hutch.engine.storage.store``
wipes it when the sandbox ends).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from hutch.exception import InvalidError, NotFoundError
from hutch.sdk.options import check_env, check_str_dict, reject_unsupported


class Secret:
    """A named set of environment variables for sandboxes and execs."""

    def __init__(self, env: dict[str, str], *, origin: str) -> None:
        self._env = env
        self._origin = origin

    @staticmethod
    def from_dict(env_dict: Mapping[str, str | None] = {}) -> Secret:
        """A secret of these variables; keys whose value is None are left out."""
        if not isinstance(env_dict, Mapping):
            raise InvalidError("Secret.from_dict needs a dict of str to str")
        kept = {k: v for k, v in env_dict.items() if v is not None}
        return Secret(check_str_dict(kept, "Secret.from_dict"), origin="from_dict")

    @staticmethod
    def from_local_environ(env_keys: list[str]) -> Secret:
        """The current values of ``env_keys`` in this process's environment."""
        if isinstance(env_keys, str) or not isinstance(env_keys, Iterable):
            raise InvalidError("Secret.from_local_environ needs a list of variable names")
        keys = list(env_keys)
        missing = [k for k in keys if k not in os.environ]
        if missing:
            raise InvalidError(
                f"Secret.from_local_environ: {', '.join(missing)} not found in the local "
                "environment"
            )
        return Secret({k: os.environ[k] for k in keys}, origin="from_local_environ")

    @staticmethod
    def from_dotenv(path: str | Path | None = None, *, filename: str = ".env",
                    client: Any = None) -> Secret:
        """The variables of a dotenv file.

        The file ``filename`` is looked for in a directory and then in each of its parents,
        as python-dotenv's ``find_dotenv`` does: from the current directory when ``path`` is
        None, else from ``path`` (a directory, or a file such as ``__file__``, whose
        directory is used).  A missing file gives an empty secret and a key without a value
        an empty string, as in Modal.
        """
        reject_unsupported({"client": client}, "Secret.from_dotenv")
        start = Path.cwd() if path is None else Path(path).absolute()
        if not start.is_dir():
            start = start.parent
        candidates = [d / filename for d in (start, *start.parents)]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            return Secret({}, origin=f"from_dotenv({filename})")
        values = {k: v or "" for k, v in dotenv_values(found).items()}
        return Secret(values, origin=f"from_dotenv({found})")

    @staticmethod
    def from_name(name: str, *, environment_name: str | None = None,
                  required_keys: list[str] = [],  # noqa: B006 - Modal's
                  client: Any = None) -> Secret:
        """Named secrets live in Modal's cloud; hutch has none to look up."""
        raise NotFoundError(
            f"Secret {name!r} not found: hutch keeps no named secrets; use Secret.from_dict, "
            "Secret.from_local_environ or Secret.from_dotenv"
        )

    def hydrate(self, client: Any = None) -> Secret:
        """Modal loads a secret's metadata here; hutch's has it from the start: returns the
        secret itself."""
        reject_unsupported({"client": client}, "Secret.hydrate")
        return self

    def keys(self) -> list[str]:
        """The variable names (never the values)."""
        return sorted(self._env)

    def env(self) -> dict[str, str]:
        """The variables, values included (what a sandbox receives)."""
        return dict(self._env)

    def __repr__(self) -> str:
        return f"Secret({self._origin}, keys={self.keys()})"


def merge_secrets(secrets: object, env: dict[str, str]) -> dict[str, str]:
    """The environment of ``secrets`` (in order) overlaid by ``env`` (checked by the
    caller).  Each secret's variables are checked here, where they are used, as the
    engine checks an environment (a secret may hold any names until it is used; the
    message names the secret by its keys, never its values)."""
    if secrets is None:
        return dict(env)
    if isinstance(secrets, Secret) or not isinstance(secrets, Iterable):
        raise InvalidError("secrets must be a list of hutch.Secret")
    merged: dict[str, str] = {}
    for secret in secrets:
        if not isinstance(secret, Secret):
            raise InvalidError(f"secrets must be hutch.Secret objects, not {type(secret).__name__}")
        merged.update(check_env(secret.env(), f"secrets: {secret!r}"))
    merged.update(env)
    return merged
