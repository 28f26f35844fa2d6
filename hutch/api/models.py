"""Wire types shared by the SDK and the engine: requests, responses and stream events.

Every request body is validated by these models in the engine, so a wrong type is answered
with a 422 validation error naming the field, never a 500.  Streams are NDJSON: one
:class:`OutputEvent` per line, ending with an event that carries ``exit_code``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hutch.api.errors import ErrorKind

API_VERSION = "2"
#: The media type of every output stream (one JSON event per line).
NDJSON = "application/x-ndjson"
DEFAULT_SANDBOX_TIMEOUT = 300.0
MAX_TIMEOUT = 24 * 3600.0

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

SandboxState = Literal["creating", "running", "exited"]
StreamMode = Literal["pipe", "devnull"]
ExitReason = Literal["exited", "terminated", "timeout", "lost", "failed", "oom"]
#: Default and largest pids limit of a sandbox (podman's default is 2048).
DEFAULT_PIDS_LIMIT = 2048
MAX_PIDS_LIMIT = 1 << 22
#: The largest offset into a file or log the API takes: far beyond any real file, and
#: small enough that an offset plus a read's length still fits the kernel's ``loff_t``.
MAX_FILE_OFFSET = 1 << 62


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _check_env(env: dict[str, str]) -> dict[str, str]:
    for key, value in env.items():
        if not _ENV_KEY.fullmatch(key):
            raise ValueError(f"invalid environment variable name {key!r}")
        if "\0" in value:
            raise ValueError(f"environment variable {key} contains a NUL byte")
    return env


def _check_name(kind: str) -> classmethod:  # type: ignore[type-arg]
    """A field validator for the name of a sandbox, app or volume (Modal's rule)."""
    def check(cls: type, v: str | None) -> str | None:
        if v is not None and not _NAME.fullmatch(v):
            raise ValueError(
                f"{kind} names are 1-64 characters of letters, digits, '.', '_' and '-'")
        return v

    return classmethod(check)


def _check_argv(argv: list[str]) -> list[str]:
    if any("\0" in a for a in argv):
        raise ValueError("arguments may not contain NUL bytes")
    return argv


def _check_workdir(path: str | None) -> str | None:
    if path is not None and (not path.startswith("/") or "\0" in path):
        raise ValueError("workdir must be an absolute path")
    return path


class VolumeMount(_Wire):
    """A volume mounted into a sandbox (``sub_path``: only that directory of it)."""

    name: str
    read_only: bool = False
    sub_path: str | None = None

    _name = field_validator("name")(_check_name("volume"))

    @field_validator("sub_path")
    @classmethod
    def _sub(cls, v: str | None) -> str | None:
        if v is not None and (".." in v.split("/") or "\0" in v):
            raise ValueError("sub_path may not contain '..'")
        return v


class ProbeSpec(_Wire):
    """A readiness probe: a TCP port that accepts connections, or a command exiting 0."""

    tcp_port: int | None = Field(default=None, ge=1, le=65535)
    exec_argv: list[str] | None = None
    interval_ms: int = Field(default=100, gt=0, le=3_600_000)

    @field_validator("exec_argv")
    @classmethod
    def _argv(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("exec_argv must not be empty")
        return None if v is None else _check_argv(v)


class LocalMount(_Wire):
    """Host files a sandbox sees at ``dest`` from when it starts (``add_local_dir`` and
    ``add_local_file`` with ``copy=False``): ``source`` an absolute host path, ``exclude``
    paths relative to it left out (what ``ignore=`` matched)."""

    source: str = Field(min_length=2, max_length=4096)
    dest: str
    file: bool = False
    exclude: list[str] = Field(default_factory=list, max_length=100_000)

    @field_validator("source", "dest")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/") or ".." in v.split("/") or "\0" in v or v.rstrip("/") == "":
            raise ValueError(f"{v!r} must be an absolute path other than /, without '..'")
        return v.rstrip("/")

    @field_validator("exclude")
    @classmethod
    def _relative(cls, v: list[str]) -> list[str]:
        if any(p.startswith("/") or ".." in p.split("/") or "\0" in p for p in v):
            raise ValueError("exclude holds relative paths without '..'")
        return v


#: a name another sandbox of the same network finds this one by (a DNS name: labels of
#: letters, digits, '-' and '_', joined by dots)
_ALIAS = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})"
                    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}))*")
MAX_NETWORK_ALIASES = 16


class NetworkAttachment(_Wire):
    """The private network a sandbox joins (``hutch network``; created beforehand) and the
    names its members find it by, besides its id (and its ``name``, when it has one)."""

    name: str
    aliases: list[str] = Field(default_factory=list, max_length=MAX_NETWORK_ALIASES)

    _name = field_validator("name")(_check_name("network"))

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, v: list[str]) -> list[str]:
        for alias in v:
            if not _ALIAS.fullmatch(alias):
                raise ValueError(f"network alias {alias[:80]!r} is not a host name (labels of "
                                 "letters, digits, '-' and '_', joined by dots)")
        return v


class CreateSandboxRequest(_Wire):
    app_id: str | None = None
    app_name: str | None = None
    name: str | None = None
    image: str | None = None
    entrypoint: list[str] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = None
    timeout: float = Field(default=DEFAULT_SANDBOX_TIMEOUT, gt=0, le=MAX_TIMEOUT)
    #: Terminated (like ``timeout``) after this long with no exec running and no stdin.
    idle_timeout: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT)
    tags: dict[str, str] = Field(default_factory=dict)
    #: Clients print a line for each exec and file operation on this sandbox.
    verbose: bool = False
    #: mount path in the sandbox -> volume
    volumes: dict[str, VolumeMount] = Field(default_factory=dict)
    readiness_probe: ProbeSpec | None = None
    #: ``none``: loopback only; ``open``: outbound access (private ranges rejected) through
    #: slirp4netns, or only to ``outbound_cidr_allowlist`` when it is given.
    network: Literal["none", "open"] = "none"
    outbound_cidr_allowlist: list[str] | None = None
    #: a private network shared with other sandboxes, besides ``network`` (hutch's own)
    network_attachment: NetworkAttachment | None = None
    #: Sandbox ports forwarded from ephemeral ports of the host's 127.0.0.1.
    unencrypted_ports: list[int] = Field(default_factory=list, max_length=64)
    #: The same, behind TLS terminated by the engine (certificate from its own CA).
    encrypted_ports: list[int] = Field(default_factory=list, max_length=64)
    #: Resources, as Modal takes them: a CPU share (fractional cores) and memory (MiB) the
    #: sandbox is guaranteed relative to others, and optional hard limits.
    cpu: float | None = Field(default=None, gt=0, le=4096)
    cpu_limit: float | None = Field(default=None, gt=0, le=4096)
    memory: int | None = Field(default=None, gt=0, le=1 << 24)
    memory_limit: int | None = Field(default=None, ge=6, le=1 << 24)
    #: the entrypoint on a pseudo-terminal of this size and ``TERM`` (``pty=True``): its
    #: output is the sandbox's stdout, its stdin the terminal's input
    pty: PtySpec | None = None
    #: Most processes and threads at once (``None``: the engine's default).
    pids_limit: int | None = Field(default=None, ge=8, le=MAX_PIDS_LIMIT)
    #: Most the sandbox may write to its root filesystem, in MiB.
    ephemeral_disk: int | None = Field(default=None, ge=1, le=1 << 24)
    #: Host files layered over the image when the sandbox starts (``copy=False``).
    local_mounts: list[LocalMount] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _requests_within_limits(self) -> CreateSandboxRequest:
        if self.cpu is not None and self.cpu_limit is not None and self.cpu > self.cpu_limit:
            raise ValueError("the cpu request may not exceed the cpu limit")
        if self.memory is not None and self.memory_limit is not None \
                and self.memory > self.memory_limit:
            raise ValueError("the memory request may not exceed the memory limit")
        return self

    @field_validator("unencrypted_ports", "encrypted_ports")
    @classmethod
    def _ports(cls, v: list[int]) -> list[int]:
        if any(not 1 <= p <= 65535 for p in v) or len(set(v)) != len(v):
            raise ValueError("ports are distinct numbers from 1 to 65535")
        return v

    @field_validator("volumes")
    @classmethod
    def _mounts(cls, v: dict[str, VolumeMount]) -> dict[str, VolumeMount]:
        for path in v:
            if not path.startswith("/") or path.rstrip("/") == "" or ".." in path.split("/") \
                    or "\0" in path:
                raise ValueError(f"volume mount path {path!r} must be absolute, not /, "
                                 "without '..' or NUL bytes")
        return v

    _name = field_validator("name")(_check_name("sandbox"))
    _app_name = field_validator("app_name")(_check_name("app"))

    @field_validator("entrypoint")
    @classmethod
    def _argv(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("entrypoint must not be empty")
        return None if v is None else _check_argv(v)

    _env = field_validator("env")(classmethod(lambda cls, v: _check_env(v)))
    _workdir = field_validator("workdir")(classmethod(lambda cls, v: _check_workdir(v)))


class PoolRequest(_Wire):
    """Declare (or resize) an app's warm pool for sandboxes created like ``sandbox``."""

    size: int = Field(ge=1, le=64)
    sandbox: CreateSandboxRequest


class PoolInfo(_Wire):
    pool_id: str
    app_id: str
    image: str
    size: int
    #: sandboxes waiting now, and handed out so far
    ready: int
    taken: int
    #: why the last start of a pooled sandbox failed (None once one succeeds)
    last_error: str | None = None


class SandboxInfo(_Wire):
    sandbox_id: str
    app_id: str
    name: str | None
    state: SandboxState
    image: str
    created_at: float
    finished_at: float | None = None
    returncode: int | None = None
    exit_reason: ExitReason | None = None
    #: Why it ended, in words, when a limit ended it (``exit_reason`` oom or pids_limit).
    exit_detail: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    timeout: float
    runtime: str
    verbose: bool = False


class SandboxList(_Wire):
    sandboxes: list[SandboxInfo]


class SetTagsRequest(_Wire):
    tags: dict[str, str]


class TerminateRequest(_Wire):
    grace_period: float = Field(default=3.0, ge=0, le=60)


#: ``user`` of an exec: a name or uid, optionally ``:group`` or ``:gid`` (Docker's form).
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?)?")
#: ``TERM`` of a terminal: what terminfo names look like.
_TERM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")


#: A terminal's size where none is known (a VT100's), and the most rows or columns taken
#: (``struct winsize`` holds 65535; nothing draws that).
DEFAULT_TERMINAL_SIZE = (24, 80)
MAX_TERMINAL_CELLS = 4096
#: ``TERM`` where the client's is unknown (what most terminal emulators are now).
DEFAULT_TERM = "xterm-256color"


class TerminalSize(_Wire):
    """A terminal's size in character cells."""

    rows: int = Field(default=DEFAULT_TERMINAL_SIZE[0], ge=1, le=MAX_TERMINAL_CELLS)
    cols: int = Field(default=DEFAULT_TERMINAL_SIZE[1], ge=1, le=MAX_TERMINAL_CELLS)


class PtySpec(TerminalSize):
    """A pseudo-terminal for a command: its stdin, stdout and stderr all go to it (the
    output comes as stream 1), and ``TERM`` is set to ``term`` unless the command's
    environment sets it."""

    term: str = DEFAULT_TERM

    @field_validator("term")
    @classmethod
    def _term(cls, v: str) -> str:
        if not _TERM.fullmatch(v):
            raise ValueError("term is a terminfo name: letters, digits, `_.+-`, at most 64")
        return v


class ExecRequest(_Wire):
    """An exec; ``stdout``/``stderr`` ``devnull`` discard a stream in the engine."""

    argv: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = None
    timeout: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT)
    stdin: bool = False
    stdout: StreamMode = "pipe"
    stderr: StreamMode = "pipe"
    #: answer once the command has ended, or after this many milliseconds, whichever comes
    #: first (0: at once): a short command's exit status then comes with the answer
    settle_ms: float = Field(default=0.0, ge=0, le=1000)
    #: run as this user of the image (``name``, ``uid``, ``name:group``, ``uid:gid``)
    user: str | None = None
    #: on a pseudo-terminal of the sandbox's (then ``stdout``/``stderr`` must be ``pipe``)
    pty: PtySpec | None = None

    _argv = field_validator("argv")(classmethod(lambda cls, v: _check_argv(v)))
    _env = field_validator("env")(classmethod(lambda cls, v: _check_env(v)))
    _workdir = field_validator("workdir")(classmethod(lambda cls, v: _check_workdir(v)))

    @field_validator("user")
    @classmethod
    def _user(cls, v: str | None) -> str | None:
        if v is not None and not _USER.fullmatch(v):
            raise ValueError("user is NAME or UID, optionally :GROUP or :GID (letters, "
                             "digits, `_.-`, at most 32 each)")
        return v

    @model_validator(mode="after")
    def _terminal_output(self) -> ExecRequest:
        if self.pty is not None and "devnull" in (self.stdout, self.stderr):
            raise ValueError("a command on a terminal has one output: stdout and stderr "
                             "must be `pipe` with `pty`")
        return self


class ExecInfo(_Wire):
    exec_id: str
    sandbox_id: str
    argv: list[str]
    state: Literal["running", "exited"]
    returncode: int | None = None
    timed_out: bool = False
    #: the size of its terminal (an exec with a pty)
    terminal: TerminalSize | None = None


class OutputEvent(_Wire):
    """One line of an NDJSON output stream.

    ``fd`` is 1 (stdout) or 2 (stderr) and ``data`` the bytes, base64-encoded; the last event
    of a finished stream has ``exit_code`` set instead.
    """

    fd: int | None = None
    data: str | None = None
    exit_code: int | None = None


class LookupAppRequest(_Wire):
    name: str
    create_if_missing: bool = False

    _name = field_validator("name")(_check_name("app"))


class LookupVolumeRequest(_Wire):
    name: str
    create_if_missing: bool = False
    #: with ``create_if_missing``: an existing volume of that name is an error (409)
    must_create: bool = False

    _name = field_validator("name")(_check_name("volume"))


class RenameVolumeRequest(_Wire):
    new_name: str

    _name = field_validator("new_name")(_check_name("volume"))


class CopyFilesRequest(_Wire):
    src_paths: list[str] = Field(min_length=1)
    dst_path: str


class MakeDirRequest(_Wire):
    path: str = Field(min_length=1)
    parents: bool = False


class RemoveRequest(_Wire):
    path: str = Field(min_length=1)
    recursive: bool = False


class ErrorBody(_Wire):
    """Every error the engine answers: a stable ``type`` the SDK maps to an exception."""

    type: ErrorKind
    message: str


_ERROR_STATUSES = {
    400: "Invalid input (an unparsable body too), or a file operation's error (``type``)",
    403: "A file operation was refused (``permission_denied``)",
    404: "No such sandbox, exec, app, image, volume, network or file",
    409: "Conflicts with the current state (e.g. the sandbox has finished)",
    422: "The request does not match its schema (the message names the field)",
    429: "Every one of a resource is in use (``resource_exhausted``)",
    504: "Timed out",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of a route: each of ``statuses`` answered with an
    :class:`ErrorBody` (422 included: the engine's validation errors are ErrorBodies too)."""
    return {status: {"model": ErrorBody, "description": _ERROR_STATUSES[status]}
            for status in statuses}


def stream_response(media_type: str, description: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entry of a route whose 200 answer is a stream."""
    return {200: {"description": description, "content": {media_type: {}}}}


def document_error_bodies(schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI description as the engine answers: FastAPI documents every 422 as its
    ``HTTPValidationError``, the engine answers them with an ErrorBody (the server's
    validation error handler); and a route taking input that documents no other error
    (a route module that declares none) gets the ones any such route may answer."""
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for item in schema["paths"].values():
        for operation in item.values():
            answers = operation.get("responses", {})
            if "422" not in answers:
                continue
            answers["422"]["content"] = body
            if not any(code.startswith("4") and code != "422" for code in answers):
                for status in (400, 404, 409):
                    answers[str(status)] = {"description": _ERROR_STATUSES[status],
                                            "content": body}
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    components.setdefault("ErrorBody", ErrorBody.model_json_schema())
    return schema
