"""The bases an ``Image`` starts from, as the engine takes them, checked when declared.

Each function returns the wire form of a base (:mod:`hutch.api.imagemodels`);
:class:`hutch.sdk.image.Image` and the Dockerfile reader (``FROM``) share them.  Registry
credentials follow Modal's secrets: ``REGISTRY_USERNAME``/``REGISTRY_PASSWORD`` for any
registry, ``SERVICE_ACCOUNT_JSON`` for Google's Artifact Registry (its ``_json_key`` login),
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_REGION`` for Amazon ECR (exchanged by
the engine for a registry token when it pulls).  They never become part of a cache key.
"""

from __future__ import annotations

import platform
import re
import sys
from typing import Any, Literal

from hutch.api.imagemodels import PYTHON_SERIES, check_python_version
from hutch.exception import InvalidError
from hutch.sdk.options import check_text, shown
from hutch.sdk.secret import Secret

#: The engine's longest image reference (``FromIdStep``, ``FromRegistryStep``).
MAX_REF_LENGTH = 512
Auth = Literal["any", "aws", "gcp"]
_KEYS: dict[str, list[set[str]]] = {
    "aws": [{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"}],
    "gcp": [{"SERVICE_ACCOUNT_JSON"}],
    "basic": [{"REGISTRY_USERNAME", "REGISTRY_PASSWORD"}],
}
_HELP = ("a registry secret holds REGISTRY_USERNAME and REGISTRY_PASSWORD; for Amazon ECR "
         "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION; for Google Artifact "
         "Registry SERVICE_ACCOUNT_JSON")


def machine() -> str:
    """This machine's architecture as Linux names it (``x86_64``, ``aarch64``)."""
    return platform.machine()


def local_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def debian_slim(python_version: str | None) -> dict[str, Any]:
    if isinstance(python_version, float):
        raise TypeError("The `python_version` argument should be a string, not a float.")
    if python_version is None:
        local = local_python()
        python_version = local if local in PYTHON_SERIES else "3.11"
    try:
        check_python_version(python_version)
    except ValueError as exc:
        raise InvalidError(str(exc)) from None
    return {"kind": "debian_slim", "python_version": python_version}


def from_id(image_id: object) -> dict[str, Any]:
    if not isinstance(image_id, str) or not image_id or len(image_id) > MAX_REF_LENGTH:
        raise InvalidError(f"Image.from_id needs an image id of at most {MAX_REF_LENGTH} "
                           f"characters, got {shown(image_id)}")
    check_text(image_id, f"Image.from_id: {shown(image_id)}")
    return {"kind": "from_id", "ref": image_id}


def registry(tag: object, secret: Secret | None, *, force_build: bool = False,
             add_python: str | None = None, setup_dockerfile_commands: Any = (),
             auth: Auth = "any", where: str = "from_registry") -> dict[str, Any]:
    """A registry image; ``auth`` says which secret keys the call takes (``any``: any
    kind Modal's ``from_registry`` infers)."""
    if not isinstance(tag, str) or not tag or tag.startswith("/") \
            or any(c.isspace() for c in tag) or len(tag) > MAX_REF_LENGTH:
        raise InvalidError(f"{where} needs an image reference (at most "
                           f"{MAX_REF_LENGTH} characters), got {shown(tag)}")
    check_text(tag, f"{where}: {shown(tag)}")
    if setup_dockerfile_commands:
        raise InvalidError(f"Image.{where}: `setup_dockerfile_commands` is not supported by "
                           "hutch; add steps (dockerfile_commands, run_commands) instead")
    base: dict[str, Any] = {"kind": "from_registry", "ref": tag,
                            "force_build": bool(force_build)}
    if add_python is not None:
        if not isinstance(add_python, str) or not re.fullmatch(r"3\.\d{1,2}", add_python) \
                or add_python not in PYTHON_SERIES:
            raise InvalidError(f"add_python takes one of {', '.join(PYTHON_SERIES)}, got "
                               f"{shown(add_python)}")
        base["add_python"] = add_python
    if secret is not None:
        base.update(_credentials(secret, auth, where))
    elif auth in ("aws", "gcp"):
        raise InvalidError(f"Image.{where} needs a secret: {_HELP}")
    return base


def _credentials(secret: Secret, auth: Auth, where: str) -> dict[str, str]:
    env = secret.env() if isinstance(secret, Secret) else None
    if env is None:
        raise InvalidError(f"Image.{where}: secret must be a hutch.Secret")
    kinds = [kind for kind, sets in _KEYS.items() if any(keys <= set(env) for keys in sets)]
    if auth != "any":
        kinds = [auth] if auth in kinds else []
    if len(kinds) != 1:
        found = ", ".join(sorted(env)) or "none"
        raise InvalidError(f"Image.{where}: {_HELP} (found keys: {found})")
    if kinds[0] == "basic":
        text = f"{env['REGISTRY_USERNAME']}:{env['REGISTRY_PASSWORD']}"
    elif kinds[0] == "gcp":
        text = f"_json_key:{env['SERVICE_ACCOUNT_JSON']}"
    else:
        text = ":".join(env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                         "AWS_REGION"))
    check_text(text, f"Image.{where}'s secret")
    return {"credentials": text, "auth": "aws" if kinds[0] == "aws" else "basic"}


def registry_host(ref: str) -> str:
    """The registry a reference names: its first part where that is a host (a dot, a
    port, ``localhost``, an IPv6 address), else Docker Hub (``docker.io``)."""
    first, slash, _ = ref.partition("/")
    if slash and (any(c in first for c in ".:[") or first == "localhost"):
        return "docker.io" if first == "index.docker.io" else first.lower()
    return "docker.io"


def reject_kwargs(kwargs: dict[str, Any], where: str) -> None:
    """Modal's ``**kwargs`` of registry images carry options hutch does not have."""
    for name, value in kwargs.items():
        if value is not None and value is not False:
            raise InvalidError(f"{where}: `{name}` is not supported by hutch")


def scratch() -> dict[str, Any]:
    return {"kind": "scratch"}
