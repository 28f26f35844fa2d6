"""Checking what users pass to ``Sandbox.create`` and ``exec`` before anything is sent.

Names and messages follow Modal's, so code that handles Modal's ``InvalidError`` reads the
same text.  A parameter hutch accepts is honoured; one it cannot honour on this host (or
not yet) raises :class:`InvalidError` naming it, never silently ignored.
"""

from __future__ import annotations

import datetime
import math
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal, NoReturn

from hutch.api.models import MAX_PIDS_LIMIT, MAX_TIMEOUT
from hutch.exception import InvalidError

#: Modal's limit on the total length of a command's arguments.
ARG_MAX_BYTES = 2**16
#: The engine's bounds on a sandbox's resources (``CreateSandboxRequest``): most cores,
#: most MiB of memory or ephemeral disk, the least memory limit (MiB: below it the
#: runtime cannot start the container) and the least pids limit.
MAX_CPU = 4096
MAX_MEMORY_MIB = 1 << 24
MIN_MEMORY_LIMIT_MIB = 6
MAX_EPHEMERAL_DISK_MIB = 1 << 24
MIN_PIDS_LIMIT = 8
#: The engine's limit on ``unencrypted_ports`` and on ``encrypted_ports``, each.
MAX_PORTS = 64
#: What the engine takes as an environment variable's name.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
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
    "_experimental_enable_snapshot": "memory snapshots are not available: CRIU cannot "
                                     "checkpoint seccomp-confined sandboxes from a rootless "
                                     "engine (docs/limits.md, \"Memory snapshots\")",
    "runtime": "hutch runs every sandbox in an OCI container (crun or runc), not gVisor or "
               "a VM",
    "gpu_image": "image steps run without GPUs on this host",
    "create_options": "volume create options are Modal's; hutch volumes take none",
    "version": "volume file-system versions are Modal's; hutch has one kind of volume",
}
#: create() parameters for features hutch does not have yet.
_NOT_YET = {
    "build_volumes": "volumes in image builds",
    "outbound_domain_allowlist": "domain allowlists",
    "inbound_cidr_allowlist": "inbound allowlists",
    "h2_ports": "HTTP/2 port forwarding",
}


#: Parameters shown under another name (the same name means another thing elsewhere).
_SHOWN = {"gpu_image": "gpu", "build_volumes": "volumes"}

#: Parameters whose empty value still means something (an empty allowlist blocks all).
_EMPTY_IS_SET = {"outbound_cidr_allowlist", "outbound_domain_allowlist",
                 "inbound_cidr_allowlist", "cidr_allowlist"}


def _is_unset(name: str, value: Any) -> bool:
    if name in _EMPTY_IS_SET:
        return value is None
    return value is None or value is False or (
        isinstance(value, list | tuple | dict | set | frozenset) and not value)


def check_sequence(items: object, item_type: type[Any], error_msg: str) -> None:
    """:class:`InvalidError` (``error_msg``) unless ``items`` is a list or tuple of
    ``item_type`` (Modal's ``modal.app.check_sequence``)."""
    if not isinstance(items, list | tuple) or not all(isinstance(v, item_type) for v in items):
        raise InvalidError(error_msg)


#: Modal's ``runtime=`` values (its gVisor or VM sandboxes): taken, and refused when set.
SandboxRuntime = Literal["gvisor", "vm"]

_TAG = re.compile(r"[a-zA-Z0-9._-]{1,63}\Z")


def check_tag_dict(tags: object) -> None:
    """Modal's rule for an app's tags: keys and values of letters, digits, ``-``, ``.``
    and ``_``, at most 63 characters (:class:`InvalidError` otherwise)."""
    if not isinstance(tags, Mapping):
        raise InvalidError("tags must be a dict of str to str")
    rules = ("\n\nTags may contain only alphanumeric characters, dashes, periods, or "
             "underscores, and must be 63 characters or less.")
    for key, value in tags.items():
        if not isinstance(key, str) or not _TAG.match(key):
            raise InvalidError(f"Invalid tag key: {key!r}.{rules}")
        if not isinstance(value, str) or not _TAG.match(value):
            raise InvalidError(f"Invalid tag value: {value!r}.{rules}")


#: Why ``get_dashboard_url`` is refused.
DASHBOARD = "hutch has no web dashboard (`hutch ps` and `hutch logs SANDBOX` show sandboxes)"


def refuse_platform(where: str, why: str) -> NoReturn:
    """:class:`InvalidError` for a call of Modal's that only its platform can answer."""
    raise InvalidError(f"{where} is not supported: {why}")


def reject_unsupported(options: Mapping[str, Any], where: str = "Sandbox.create") -> None:
    """:class:`InvalidError` for the first parameter set to something hutch cannot honour
    (``where``: the call, named in the message)."""
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
            raise InvalidError(f"{where}: `{_SHOWN.get(name, name)}` is not supported: "
                               f"{_NEVER[name]}")
        if name in _NOT_YET:
            raise InvalidError(
                f"{where}: `{_SHOWN.get(name, name)}` is not supported by this version of hutch "
                f"({_NOT_YET[name]} are not implemented yet)"
            )


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages: a number such as
    ``10**5000`` has no repr at all (Python refuses to print ints that long)."""
    try:
        text = repr(value)
    except ValueError:
        return "a huge integer"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_text(value: str, what: str, *, nul: bool = False) -> str:
    """``value`` if it can be sent: every request is JSON in UTF-8, which a lone surrogate
    (as ``os.fsdecode`` makes of bytes that are not UTF-8) cannot be encoded in, and the
    engine refuses NUL bytes in what becomes a C string (arguments, paths, environment
    variables) -- unless ``nul`` says this text may hold them (a tag's value)."""
    if not nul and "\0" in value:
        raise InvalidError(f"{what} contains a NUL byte")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidError(f"{what} is not valid UTF-8 text (it has a lone surrogate)"
                           ) from None
    return value


def check_args(args: tuple[Any, ...], what: str) -> list[str]:
    """The arguments of a command (an exec or an entrypoint): strings the kernel can take
    (no NUL bytes), within Modal's ARG_MAX."""
    if not all(isinstance(a, str) for a in args):
        raise InvalidError(f"All {what} arguments must be strings")
    for arg in args:
        check_text(arg, f"{what}: the argument {shown(arg)}")
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
    """An absolute path (Modal's rule) without NUL bytes (the engine's), or None."""
    if workdir is None:
        return None
    if not isinstance(workdir, str) or not workdir.startswith("/"):
        raise InvalidError(f"workdir must be an absolute path, got: {workdir}")
    return check_text(workdir, "workdir")


def check_user(user: object) -> str:
    """Who an exec runs as: a name or a uid, optionally ``:group`` (the engine checks the
    form and looks the names up in the image's own files)."""
    if isinstance(user, bool) or not isinstance(user, str | int):
        raise InvalidError(f"user must be a name or a uid, got: {user!r}")
    if isinstance(user, int):
        if user < 0:
            raise InvalidError(f"user must be a name or a uid, got: {user}")
        return str(user)
    if not user:
        raise InvalidError("user must not be empty")
    return user


def check_mount_path(path: object) -> str:
    """Where a volume is mounted in a sandbox, as the engine takes it: an absolute path,
    not ``/`` itself (the root filesystem is the image's), without ``..`` (the mount must
    land where it says) or NUL bytes."""
    try:
        mount_path = os.fspath(path)  # type: ignore[call-overload]
    except TypeError:
        mount_path = None
    if not isinstance(mount_path, str) or not mount_path.startswith("/") \
            or mount_path.rstrip("/") == "" or ".." in mount_path.split("/"):
        raise InvalidError(f"`volumes`: the mount path {shown(path)} must be an absolute "
                           "path other than / and without '..'")
    return check_text(mount_path, f"`volumes`: the mount path {shown(mount_path)}")


def _as_float(value: object) -> float | None:
    """``value`` as a float if it is a number (not a bool) a float can hold, else None:
    ``float(10**400)`` raises OverflowError, which callers turn into InvalidError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def check_timeout(value: object, what: str, *, optional: bool) -> float | None:
    """A timeout in seconds as the engine takes it: positive and at most a day
    (``MAX_TIMEOUT``, Modal's limit too); None only when ``optional``."""
    if value is None and optional:
        return None
    seconds = _as_float(value)
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise InvalidError(f"{what} must be a positive number of seconds, got: {shown(value)}")
    if seconds > MAX_TIMEOUT:
        raise InvalidError(f"{what} must be at most {MAX_TIMEOUT:g} seconds (24 hours), "
                           f"got: {shown(value)}")
    return seconds


def check_wait(value: object, what: str = "`timeout`") -> float:
    """How long a client waits (``wait_until_ready``), in seconds: positive; no upper
    bound, as only the client keeps it (``math.inf``: for as long as it takes)."""
    seconds = _as_float(value)
    if seconds is None or math.isnan(seconds) or seconds <= 0:
        raise InvalidError(f"{what} must be positive, got: {shown(value)}")
    return seconds


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
                f"{what} must be a dict of str to str; {shown(key)} maps to "
                f"{type(val).__name__}"
            )
        check_text(key, f"{what}: the key {shown(key)}", nul=True)
        check_text(val, f"{what}: the value of {shown(key)}", nul=True)
    return dict(value)


def check_env(env: object, what: str = "env") -> dict[str, str]:
    """``env`` as the engine takes an environment: str -> str, each name a shell
    variable's (``[A-Za-z_][A-Za-z0-9_]*``) and no value with a NUL byte (the kernel's
    environment is C strings).  Messages name the variables, never their values, which
    may be secrets."""
    checked = check_str_dict(env, what)
    for key, val in checked.items():
        if not _ENV_NAME.fullmatch(key):
            raise InvalidError(f"{what}: {shown(key)} is not a valid environment variable "
                               "name (letters, digits and '_', not starting with a digit)")
        if "\0" in val:
            raise InvalidError(f"{what}: the value of {key} contains a NUL byte")
    return checked


def env_without_none(env: object, what: str = "env") -> dict[str, str]:
    """``env`` with None values dropped (Modal's rule), checked by :func:`check_env`."""
    if isinstance(env, Mapping):
        env = {k: v for k, v in env.items() if v is not None}
    return check_env(env, what)


def _bounded(value: object, what: str, kind: type, low: int, high: int, unit: str) -> float:
    """A positive number of ``kind`` (an int, or an int or float) within the engine's
    ``low`` (when above 1) and ``high``; ints are compared as they are, so one too large
    for a float is refused, never an OverflowError."""
    number_types = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, number_types) \
            or (isinstance(value, float) and not math.isfinite(value)) or value <= 0:
        raise InvalidError(f"{what} must be a positive {kind.__name__}, got: {shown(value)}")
    if value < low:
        raise InvalidError(f"{what} must be at least {low} {unit}, got: {shown(value)}")
    if value > high:
        raise InvalidError(f"{what} must be at most {high} {unit}, got: {shown(value)}")
    return float(value) if kind is float else value  # type: ignore[return-value]


def _request_and_limit(value: object, what: str, kind: type, high: int, unit: str,
                       limit_low: int = 0) -> tuple[float | None, float | None]:
    """Modal's ``x`` (a request) or ``(request, limit)`` (a request and a hard limit)."""
    if value is None:
        return None, None
    if isinstance(value, tuple):
        if len(value) != 2:
            raise InvalidError(f"`{what}` must be a number or a (request, limit) tuple")
        request = _bounded(value[0], f"the `{what}` request", kind, 0, high, unit)
        limit = _bounded(value[1], f"the `{what}` limit", kind, limit_low, high, unit)
        if limit < request:
            raise InvalidError(f"Cannot specify a {what} limit lower than request: "
                               f"{value[1]} < {value[0]}")
        return request, limit
    return _bounded(value, f"`{what}`", kind, 0, high, unit), None


def check_resources(*, cpu: object, memory: object, ephemeral_disk: object,
                    pids_limit: object) -> dict[str, Any]:
    """The resource fields of a create request: ``cpu`` in fractional cores and ``memory``
    in MiB, each a request or a ``(request, limit)`` pair as Modal takes them;
    ``ephemeral_disk`` in MiB; ``pids_limit`` (hutch's own) a count of processes.  Each
    within the engine's bounds, so a value it would refuse is refused here, by name."""
    cpu_request, cpu_limit = _request_and_limit(cpu, "cpu", float, MAX_CPU, "cores")
    memory_request, memory_limit = _request_and_limit(
        memory, "memory", int, MAX_MEMORY_MIB, "MiB", MIN_MEMORY_LIMIT_MIB)
    fields: dict[str, Any] = {
        "cpu": cpu_request, "cpu_limit": cpu_limit,
        "memory": memory_request, "memory_limit": memory_limit,
    }
    if ephemeral_disk is not None:
        fields["ephemeral_disk"] = _bounded(ephemeral_disk, "`ephemeral_disk`", int, 0,
                                            MAX_EPHEMERAL_DISK_MIB, "MiB")
    if pids_limit is not None:
        fields["pids_limit"] = _bounded(pids_limit, "`pids_limit`", int, MIN_PIDS_LIMIT,
                                        MAX_PIDS_LIMIT, "processes")
    return {k: v for k, v in fields.items() if v is not None}


def check_ports(ports: object, what: str) -> list[int]:
    """``unencrypted_ports`` or ``encrypted_ports`` as the engine takes them: at most
    ``MAX_PORTS`` distinct port numbers from 1 to 65535."""
    if ports is None:
        return []
    checked = list(ports) if isinstance(ports, Iterable) \
        and not isinstance(ports, str | bytes | Mapping) else None
    if checked is None or not all(isinstance(p, int) and not isinstance(p, bool)
                                  for p in checked):
        raise InvalidError(f"`{what}` must be a list of port numbers")
    bad = [p for p in checked if not 1 <= p <= 65535]
    if bad:
        raise InvalidError(f"`{what}`: {shown(bad[0])} is not a port number (1-65535)")
    if len(set(checked)) != len(checked):
        raise InvalidError(f"`{what}` lists a port more than once: {checked}")
    if len(checked) > MAX_PORTS:
        raise InvalidError(f"`{what}` may list at most {MAX_PORTS} ports")
    return checked


def listing_bounds(max_objects: object, created_before: object) -> float | None:
    """Modal's ``objects.list`` bounds, checked: ``created_before`` (a datetime or an ISO
    date; naive ones are UTC) as a timestamp, or None."""
    if max_objects is not None and (isinstance(max_objects, bool)
                                    or not isinstance(max_objects, int) or max_objects < 0):
        raise InvalidError("max_objects cannot be negative")
    before = created_before
    if isinstance(before, str):
        try:
            before = datetime.datetime.fromisoformat(before)
        except ValueError as exc:
            raise InvalidError(f"created_before: {exc}") from None
    if before is None:
        return None
    if not isinstance(before, datetime.datetime):
        raise InvalidError("created_before must be a datetime or an ISO date")
    if before.tzinfo is None:
        before = before.replace(tzinfo=datetime.UTC)
    return before.timestamp()
