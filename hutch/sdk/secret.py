"""``hutch.Secret``: environment variables handed to a sandbox or an exec, Modal-style.

A secret is a set of variables (given in code, or named and stored by
:mod:`hutch.sdk.secretstore`, read when first used), merged into the environment of the sandbox
(``Sandbox.create(secrets=[...])``) or of one exec (``exec(..., secrets=[...])``), later
secrets and explicit ``env`` winning.  Its values never appear in a ``repr``, in verbose
lines or in the engine's log; only the variable names do.  The engine keeps a sandbox's
environment in its state database only while the sandbox runs (``hutch.engine.storage.store``
wipes it when the sandbox ends).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from hutch.exception import InvalidError, NotFoundError
from hutch.sdk import secretstore
from hutch.sdk.localobject import LocalObject
from hutch.sdk.options import (
    check_env,
    check_object_name,
    check_str_dict,
    listing_bounds,
    reject_unsupported,
)
from hutch.sdk.syncbridge import synchronize


@dataclass(frozen=True)
class SecretInfo:
    """What ``Secret.info()`` tells of a named secret (Modal's ``modal.types.SecretInfo``)."""

    name: str | None
    environment_name: str
    created_at: datetime.datetime
    created_by: str | None
    last_used: datetime.datetime | None


class SecretManager:
    """``Secret.objects``: the named secrets (``hutch secret`` on the command line)."""

    @synchronize
    async def create(self, name: str, env_dict: dict[str, str], *,
                     allow_existing: bool = False, environment_name: str | None = None,
                     client: Any = None) -> None:
        """Store a named secret; :class:`AlreadyExistsError` if the name is taken, unless
        ``allow_existing`` (then the existing values are kept)."""
        reject_unsupported({"environment_name": environment_name, "client": client},
                           "Secret.objects.create")
        if not isinstance(env_dict, Mapping):
            raise InvalidError("Secret.objects.create needs a dict of str to str")
        secretstore.create(name, dict(env_dict), allow_existing=allow_existing)

    @synchronize
    async def list(self, *, max_objects: int | None = None,
                   created_before: datetime.datetime | str | None = None,
                   environment_name: str = "", client: Any = None) -> list[Secret]:
        """The named secrets, newest first (values are read only when used)."""
        reject_unsupported({"environment_name": environment_name or None, "client": client},
                           "Secret.objects.list")
        before = listing_bounds(max_objects, created_before)
        found = [Secret._named(stored.name, stored=stored) for stored in secretstore.listing()
                 if before is None or stored.created_at < before]
        return found if max_objects is None else found[:max_objects]

    @synchronize
    async def delete(self, name: str, *, allow_missing: bool = False,
                     environment_name: str | None = None, client: Any = None) -> None:
        """Delete a named secret (sandboxes started with it keep their environment)."""
        reject_unsupported({"environment_name": environment_name, "client": client},
                           "Secret.objects.delete")
        secretstore.delete(name, allow_missing=allow_missing)


class Secret(LocalObject):
    """A set of environment variables for sandboxes and execs, given in code or named."""

    #: The named secrets: ``Secret.objects.create/list/delete``.
    objects = SecretManager()

    def __init__(self, env: dict[str, str] | None, *, origin: str, name: str | None = None,
                 required_keys: Iterable[str] = ()) -> None:
        self._loaded = env
        self._origin = origin
        self._name = name
        self._required = list(required_keys)
        self._stored: secretstore.StoredSecret | None = None

    @classmethod
    def _named(cls, name: str, required_keys: Iterable[str] = (),
               stored: secretstore.StoredSecret | None = None) -> Secret:
        secret = cls(None, origin=f"from_name({name!r})", name=name,
                     required_keys=required_keys)
        secret._stored = stored
        return secret

    @property
    def _env(self) -> dict[str, str]:
        """The variables; a named secret's are read from the store at first use."""
        if self._loaded is None:
            assert self._name is not None
            stored = self._stored = secretstore.read(self._name)
            missing = [k for k in self._required if k not in stored.env]
            if missing:
                raise NotFoundError(f"Secret {self._name!r} is missing the keys "
                                    f"{', '.join(missing)} (required_keys)")
            self._loaded = stored.env
        return self._loaded

    @property
    def name(self) -> str | None:
        """The name of a named secret (``from_name``), else None."""
        return self._name

    @property
    def object_id(self) -> str | None:
        """A named secret's id (``st-...``); None for one given in code."""
        if self._name is None:
            return None
        if self._stored is None:
            self._env  # noqa: B018 - read it
        assert self._stored is not None
        return self._stored.secret_id

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
        """The named secret ``name`` (``hutch secret create``, ``Secret.objects.create``),
        read when first used, as Modal's is: a missing one raises :class:`NotFoundError`
        then (or at ``hydrate()``), not here."""
        reject_unsupported({"environment_name": environment_name, "client": client},
                           "Secret.from_name")
        check_object_name(name, "Secret")
        if isinstance(required_keys, str) or not isinstance(required_keys, Iterable):
            raise InvalidError("required_keys must be a list of variable names")
        return Secret._named(name, required_keys)

    @synchronize
    async def info(self) -> SecretInfo:
        """When a named secret was made (Modal's ``SecretInfo``)."""
        if self._name is None:
            raise InvalidError("only a named secret (Secret.from_name) has info")
        self._stored = secretstore.read(self._name)
        created = datetime.datetime.fromtimestamp(self._stored.created_at, datetime.UTC)
        return SecretInfo(name=self._name, environment_name="main", created_at=created,
                          created_by=None, last_used=None)

    @synchronize
    async def update(self, env_dict: dict[str, str]) -> None:
        """Replace a named secret's variables with ``env_dict``."""
        if self._name is None:
            raise InvalidError("only a named secret (Secret.from_name) can be updated")
        if not isinstance(env_dict, Mapping):
            raise InvalidError("Secret.update needs a dict of str to str")
        secretstore.update(self._name, dict(env_dict))
        self._loaded, self._stored = None, None  # read again at the next use

    def hydrate(self, client: Any = None) -> Secret:
        """Read a named secret now (:class:`NotFoundError` if there is none); returns the
        secret itself."""
        reject_unsupported({"client": client}, "Secret.hydrate")
        self._env  # noqa: B018 - read it
        return self

    def keys(self) -> list[str]:
        """The variable names (never the values)."""
        return sorted(self._env)

    def env(self) -> dict[str, str]:
        """The variables, values included (what a sandbox receives)."""
        return dict(self._env)

    def __repr__(self) -> str:
        if self._loaded is None:
            return f"Secret({self._origin})"  # (not read yet: a repr reads nothing)
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
