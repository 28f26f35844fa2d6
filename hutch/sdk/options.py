"""Checking what users pass to ``Sandbox.create`` and ``exec`` before anything is sent.

Names and messages follow Modal's, so code that handles Modal's ``InvalidError`` reads the
same text.  A parameter hutch accepts is honoured; one it cannot honour on this host (or
not yet) raises :class:`InvalidError` naming it, never silently ignored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from hutch.exception import InvalidError

#: Modal's limit on the total length of a command's arguments.
ARG_MAX_BYTES = 2**16
_OBJECT_NAME = re.compile(r"[a-zA-Z0-9\-_.]+")
SANDBOX_ID = re.compile(r"sb-(?:[0-9A-Za-z]{22}|[0-7][0-9A-HJKMNP-TV-Z]{25})")  # Modal: v1 or ULID

#: create() parameters this host can never honour, and why.
_NEVER = {
    "gpu": "there are no GPUs for sandboxes on this host",
    "cloud": "hutch runs sandboxes on this machine only",
    "region": "hutch runs sandboxes on this machine only",
    "custom_domain": "hutch serves no public domains",
    "proxy": "hutch has no Modal proxies",
    "client": "hutch talks to the local engine; pass no client",
    "environment_name": "hutch has no Modal environments",
    "network_file_systems": "network file systems are a Modal cloud feature; use volumes",
    "include_oidc_identity_token": "hutch issues no OIDC identity tokens",
    "experimental_options": "hutch has no experimental options",
    "_experimental_enable_snapshot": "hutch has no memory snapshots",
}
#: create() parameters for features hutch does not have yet.
_NOT_YET = {
    "outbound_domain_allowlist": "domain allowlists",
    "inbound_cidr_allowlist": "inbound allowlists",
    "h2_ports": "HTTP/2 port forwarding",
    "pty": "pseudo-terminals",
    "pty_info": "pseudo-terminals",
}


#: Parameters whose empty value still means something (an empty allowlist blocks all).
_EMPTY_IS_SET = {"outbound_cidr_allowlist", "outbound_domain_allowlist",
                 "inbound_cidr_allowlist", "cidr_allowlist"}


def _is_unset(name: str, value: Any) -> bool:
    if name in _EMPTY_IS_SET:
        return value is None
    return value is None or value is False or (
        isinstance(value, list | tuple | dict | set | frozenset) and not value)


def reject_unsupported(options: Mapping[str, Any]) -> None:
    """:class:`InvalidError` for the first parameter set to something hutch cannot honour."""
    if options.get("cidr_allowlist") is not None and \
            options.get("outbound_cidr_allowlist") is not None:
        raise InvalidError("Cannot specify both `cidr_allowlist` and `outbound_cidr_allowlist`.")
    ports = any(options.get(p) for p in ("encrypted_ports", "h2_ports", "unencrypted_ports"))
    if options.get("block_network") and ports:
        raise InvalidError("Cannot specify open ports when `block_network` is enabled")
    for name in ("outbound_cidr_allowlist", "outbound_domain_allowlist",
                 "inbound_cidr_allowlist", "cidr_allowlist"):
        if options.get("block_network") and options.get(name) is not None:
            shown = "outbound_cidr_allowlist" if name == "cidr_allowlist" else name
            raise InvalidError(f"`{shown}` cannot be used when `block_network` is enabled")
    for name, value in options.items():
        if _is_unset(name, value):
            continue
        if name in _NEVER:
            raise InvalidError(f"Sandbox.create: `{name}` is not supported: {_NEVER[name]}")
        if name in _NOT_YET:
            raise InvalidError(
                f"Sandbox.create: `{name}` is not supported by this version of hutch "
                f"({_NOT_YET[name]} are not implemented yet)"
            )


def check_args(args: tuple[Any, ...], what: str) -> list[str]:
    if not all(isinstance(a, str) for a in args):
        raise InvalidError(f"All {what} arguments must be strings")
    total = sum(len(a) for a in args)
    if total > ARG_MAX_BYTES:
        raise InvalidError(
            f"Total length of CMD arguments cannot exceed {ARG_MAX_BYTES} bytes (ARG_MAX). "
            f"Got {total} bytes."
        )
    return list(args)


def check_object_name(name: object, kind: str) -> str:
    if not isinstance(name, str) or not _OBJECT_NAME.fullmatch(name) or len(name) > 64:
        raise InvalidError(
            f"Invalid {kind} name: {name!r}.\n\nNames may contain only alphanumeric "
            "characters, dashes, periods, and underscores, and must be shorter than 64 "
            "characters."
        )
    return name


def check_workdir(workdir: object) -> str | None:
    if workdir is None:
        return None
    if not isinstance(workdir, str) or not workdir.startswith("/"):
        raise InvalidError(f"workdir must be an absolute path, got: {workdir}")
    return workdir


def check_timeout(value: object, what: str, *, optional: bool) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value <= 0:
        raise InvalidError(f"{what} must be a positive number of seconds, got: {value!r}")
    return float(value)


def check_sandbox_id(sandbox_id: object) -> str:
    if not isinstance(sandbox_id, str) or not SANDBOX_ID.fullmatch(sandbox_id):
        raise InvalidError(f"Invalid Sandbox ID: {sandbox_id!r}")
    return sandbox_id


def check_str_dict(value: object, what: str) -> dict[str, str]:
    """``value`` as a dict of str to str (None is empty), or :class:`InvalidError`."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidError(f"{what} must be a dict of str to str, not {type(value).__name__}")
    for key, val in value.items():
        if not isinstance(key, str) or not isinstance(val, str):
            raise InvalidError(
                f"{what} must be a dict of str to str; {key!r} maps to {type(val).__name__}"
            )
    return dict(value)


def env_without_none(env: object, what: str = "env") -> dict[str, str]:
    """``env`` with None values dropped (Modal's rule), checked to be str -> str."""
    if isinstance(env, Mapping):
        env = {k: v for k, v in env.items() if v is not None}
    return check_str_dict(env, what)


def _positive(value: object, what: str, kind: type) -> float:
    number_types = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, number_types) \
            or not math.isfinite(value) or value <= 0:
        raise InvalidError(f"{what} must be a positive {kind.__name__}, got: {value!r}")
    return float(value)


def _request_and_limit(value: object, what: str, kind: type
                       ) -> tuple[float | None, float | None]:
    """Modal's ``x`` (a request) or ``(request, limit)`` (a request and a hard limit)."""
    if value is None:
        return None, None
    if isinstance(value, tuple):
        if len(value) != 2:
            raise InvalidError(f"`{what}` must be a number or a (request, limit) tuple")
        request = _positive(value[0], f"the `{what}` request", kind)
        limit = _positive(value[1], f"the `{what}` limit", kind)
        if limit < request:
            raise InvalidError(f"Cannot specify a {what} limit lower than request: "
                               f"{value[1]} < {value[0]}")
        return request, limit
    return _positive(value, f"`{what}`", kind), None


def check_resources(*, cpu: object, memory: object, ephemeral_disk: object,
                    pids_limit: object) -> dict[str, Any]:
    """The resource fields of a create request: ``cpu`` in fractional cores and ``memory``
    in MiB, each a request or a ``(request, limit)`` pair as Modal takes them;
    ``ephemeral_disk`` in MiB; ``pids_limit`` (hutch's own) a count of processes."""
    cpu_request, cpu_limit = _request_and_limit(cpu, "cpu", float)
    memory_request, memory_limit = _request_and_limit(memory, "memory", int)
    fields: dict[str, Any] = {
        "cpu": cpu_request, "cpu_limit": cpu_limit,
        "memory": None if memory_request is None else int(memory_request),
        "memory_limit": None if memory_limit is None else int(memory_limit),
    }
    if ephemeral_disk is not None:
        fields["ephemeral_disk"] = int(_positive(ephemeral_disk, "`ephemeral_disk`", int))
    if pids_limit is not None:
        fields["pids_limit"] = int(_positive(pids_limit, "`pids_limit`", int))
    return {k: v for k, v in fields.items() if v is not None}
