"""hutch as a sandbox backend of the OpenAI Agents SDK's Sandbox Agents:
``SandboxRunConfig(client=HutchSandboxClient())``.

It follows the SDK's own Modal and Docker backends (a client that creates, deletes and
resumes sessions, and a session that runs commands, reads and writes files and keeps its
workspace), built on hutch's SDK directly rather than through the Modal shim, so that it
uses what hutch does natively:

- ``user=`` runs the command as that user of the image (``exec(user=...)``) where the
  SDK's base class would prefix ``sudo -u``, which slim images lack;
- files are read and written through ``Sandbox.filesystem`` (resolved inside the sandbox,
  never through a symlink out of it), and through an exec as the user when one is named;
- the workspace persists as a snapshot image (``snapshot_directory`` by default, or
  ``snapshot_filesystem``), restored in milliseconds, or as a tar (``tar``) that other
  backends can read too (:mod:`hutch.integrations.agentrefs`);
- terminals are ``exec(pty=True)`` (:mod:`hutch.integrations.openai_agents_pty`).

Why the async ``.aio`` forms throughout: the SDK runs on asyncio, and hutch's async calls run
on the caller's loop without a thread per call.
"""

from __future__ import annotations

import asyncio
import io
import shlex
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from agents.sandbox.errors import (
    ExecTimeoutError,
    ExecTransportError,
    ExposedPortUnavailableError,
    WorkspaceArchiveReadError,
    WorkspaceArchiveWriteError,
    WorkspaceReadNotFoundError,
    WorkspaceWriteTypeError,
)
from agents.sandbox.manifest import Manifest
from agents.sandbox.session import SandboxSession, SandboxSessionState
from agents.sandbox.session.dependencies import Dependencies
from agents.sandbox.session.manager import Instrumentation
from agents.sandbox.session.runtime_helpers import (
    RESOLVE_WORKSPACE_PATH_HELPER,
    RuntimeHelperScript,
)
from agents.sandbox.session.sandbox_client import BaseSandboxClient, BaseSandboxClientOptions
from agents.sandbox.snapshot import SnapshotBase, SnapshotSpec, resolve_snapshot
from agents.sandbox.types import ExecResult, ExposedPortEndpoint, User
from agents.sandbox.util.tar_utils import UnsafeTarMemberError, validate_tar_bytes
from agents.sandbox.workspace_paths import sandbox_path_str

import hutch
from hutch.integrations import agentrefs
from hutch.integrations.agentrefs import PersistenceMode
from hutch.integrations.openai_agents_pty import HutchPtyMixin

__all__ = ["HutchSandboxClient", "HutchSandboxClientOptions", "HutchSandboxSession",
           "HutchSandboxSessionState"]

#: Seconds an engine call other than a command may take (create, terminate, snapshot).
_CALL_TIMEOUT_S = 60


class HutchSandboxClientOptions(BaseSandboxClientOptions):  # type: ignore[misc]
    """Per-session settings (``SandboxRunConfig(options=...)``; optional: the defaults
    serve).  ``timeout`` and ``idle_timeout`` are the sandbox's, in seconds; ``cpu`` (cores)
    and ``memory`` (MiB) are enforced with cgroups where the host can."""

    type: Literal["hutch"] = "hutch"
    app_name: str = "openai-agents"
    workspace_persistence: PersistenceMode = "snapshot_directory"
    timeout: int = 300
    idle_timeout: int | None = None
    cpu: float | None = None
    memory: int | None = None
    block_network: bool = False
    exposed_ports: tuple[int, ...] = ()
    sandbox_create_timeout_s: float | None = None


class HutchSandboxSessionState(SandboxSessionState):  # type: ignore[misc]
    """What a session needs to come back (``resume``): the sandbox's id while it runs, the
    image to start a new one from (``image_id``: an engine reference such as a snapshot's,
    for ``Image.from_id``; else hutch's default image) and the session's settings."""

    type: Literal["hutch"] = "hutch"
    app_name: str = "openai-agents"
    image_id: str | None = None
    sandbox_id: str | None = None
    workspace_persistence: PersistenceMode = "snapshot_directory"
    timeout: int = 300
    idle_timeout: int | None = None
    cpu: float | None = None
    memory: int | None = None
    block_network: bool = False
    sandbox_create_timeout_s: float = float(_CALL_TIMEOUT_S)


def _user_name(user: str | User | None) -> str | None:
    return user.name if isinstance(user, User) else user


class HutchSandboxSession(HutchPtyMixin):
    """One hutch sandbox, started on first use (``start``) and reconnected by id."""

    state: HutchSandboxSessionState

    def __init__(self, *, state: HutchSandboxSessionState, image: hutch.Image | None = None,
                 sandbox: hutch.Sandbox | None = None) -> None:
        self.state = state
        self._image = image
        self._sandbox = sandbox
        self._mounted_root: str | None = None  # where a snapshot_directory hydrate mounted
        if sandbox is not None:
            self.state.sandbox_id = sandbox.object_id
        self._init_pty()

    @classmethod
    def from_state(cls, state: HutchSandboxSessionState, *, image: hutch.Image | None = None,
                   sandbox: hutch.Sandbox | None = None) -> HutchSandboxSession:
        return cls(state=state, image=image, sandbox=sandbox)

    # -- the sandbox -------------------------------------------------------------------

    def _runtime_helpers(self) -> tuple[RuntimeHelperScript, ...]:
        return (RESOLVE_WORKSPACE_PATH_HELPER,)

    def _current_runtime_helper_cache_key(self) -> object | None:
        return self.state.sandbox_id

    async def _validate_path_access(self, path: Path | str, *, for_write: bool = False) -> Path:
        resolved: Path = await self._validate_remote_path_access(path, for_write=for_write)
        return resolved

    async def _ensure_backend_started(self) -> None:
        await self._ensure_sandbox()

    async def _prepare_backend_workspace(self) -> None:
        root = self._workspace_path_policy().sandbox_root().as_posix()
        await self.exec("mkdir", "-p", "--", root, shell=False)

    async def _ensure_sandbox(self) -> bool:
        """Reconnect to the state's sandbox if it still runs (→ True), else start one."""
        if self._sandbox is not None:
            return False
        if self.state.sandbox_id:
            try:
                found = await hutch.Sandbox.from_id.aio(self.state.sandbox_id)
                if await found.poll.aio() is None:
                    self._sandbox = found
                    return True
            except Exception:  # (gone, or the engine lost it: start a fresh one)
                pass
            self.state.sandbox_id = None
        await self._create_sandbox(self._session_image())
        return False

    def _session_image(self) -> hutch.Image:
        if self._image is None:
            self._image = (hutch.Image.from_id(self.state.image_id) if self.state.image_id
                           else hutch.Image.debian_slim())
        return self._image

    async def _create_sandbox(self, image: hutch.Image) -> hutch.Sandbox:
        env = await self.state.manifest.environment.resolve()
        app = await hutch.App.lookup.aio(self.state.app_name, create_if_missing=True)
        sandbox = await asyncio.wait_for(hutch.Sandbox.create.aio(
            app=app, image=image, workdir=self.state.manifest.root, env=dict(env),
            timeout=self.state.timeout, idle_timeout=self.state.idle_timeout,
            cpu=self.state.cpu, memory=self.state.memory,
            block_network=self.state.block_network,
            unencrypted_ports=tuple(self.state.exposed_ports)),
            timeout=self.state.sandbox_create_timeout_s)
        self._sandbox, self._mounted_root = sandbox, None
        self.state.sandbox_id = sandbox.object_id
        self.state.workspace_root_ready = False
        return sandbox

    async def _handle(self) -> hutch.Sandbox:
        await self._ensure_sandbox()
        assert self._sandbox is not None
        return self._sandbox

    async def _terminate(self) -> None:
        sandbox, self._sandbox = self._sandbox, None
        if sandbox is None and self.state.sandbox_id:
            try:
                sandbox = await hutch.Sandbox.from_id.aio(self.state.sandbox_id)
            except Exception:
                sandbox = None
        if sandbox is not None:
            try:
                await asyncio.wait_for(sandbox.terminate.aio(), timeout=_CALL_TIMEOUT_S)
            except Exception:  # (best effort, as the SDK's backends: it may have ended)
                pass
        self.state.sandbox_id = None
        self.state.workspace_root_ready = False

    async def _resolve_exposed_port(self, port: int) -> ExposedPortEndpoint:
        """The host's end of a sandbox port: plain TCP on 127.0.0.1, relayed by the engine
        (hutch ports are local; nothing listens for them beyond the host's loopback)."""
        sandbox = await self._handle()
        try:
            tunnel = (await sandbox.tunnels.aio(timeout=10))[port]
        except Exception as e:
            raise ExposedPortUnavailableError(
                port=port, exposed_ports=self.state.exposed_ports, reason="backend_unavailable",
                context={"backend": "hutch"}, cause=e) from e
        return ExposedPortEndpoint(host=tunnel.host, port=tunnel.port, tls=False)

    async def _shutdown_backend(self) -> None:
        await self._terminate()

    async def running(self) -> bool:
        if self._sandbox is None:
            return False
        try:
            return await asyncio.wait_for(self._sandbox.poll.aio(), timeout=5.0) is None
        except Exception:
            return False

    # -- commands ----------------------------------------------------------------------

    async def exec(self, *command: str | Path, timeout: float | None = None,
                   shell: bool | list[str] = True,
                   user: str | User | None = None) -> ExecResult:
        """The base class's ``exec`` with ``user`` run natively rather than by ``sudo``."""
        argv = self._prepare_exec_command(*command, shell=shell, user=None)
        return await self._run(argv, timeout=timeout, user=_user_name(user))

    async def _exec_internal(self, *command: str | Path,
                             timeout: float | None = None) -> ExecResult:
        return await self._run([str(part) for part in command], timeout=timeout, user=None)

    async def _run(self, argv: list[str], *, timeout: float | None, user: str | None,
                   stdin: bytes | None = None) -> ExecResult:
        """Run ``argv`` to its end: its output, and its exit code.  The engine kills it
        (and what it started) past ``timeout``; :class:`ExecTimeoutError` then."""
        sandbox = await self._handle()
        options: dict[str, Any] = {"text": False, "timeout": agentrefs.exec_timeout(timeout)}
        if user:
            options["user"] = user
        started = time.monotonic()

        async def run() -> ExecResult:
            proc = await sandbox.exec.aio(*argv, **options)
            if stdin is not None:
                proc.stdin.write(stdin)
                proc.stdin.write_eof()
                await proc.stdin.drain.aio()
            out, err = await asyncio.gather(proc.stdout.read.aio(), proc.stderr.read.aio())
            return ExecResult(stdout=out or b"", stderr=err or b"",
                              exit_code=await proc.wait.aio())

        try:  # (a backstop past the engine's own kill, for an engine that stopped answering)
            result = await asyncio.wait_for(
                run(), timeout=None if timeout is None else timeout + _CALL_TIMEOUT_S)
        except TimeoutError as e:
            raise ExecTimeoutError(command=argv, timeout_s=timeout, cause=e) from e
        except Exception as e:
            raise ExecTransportError(command=argv, cause=e) from e
        if (result.exit_code == -1 and timeout is not None
                and time.monotonic() - started >= timeout):
            raise ExecTimeoutError(command=argv, timeout_s=timeout)
        return result

    # -- files -------------------------------------------------------------------------

    async def read(self, path: Path, *, user: str | User | None = None) -> io.IOBase:
        workspace_path = await self._validate_path_access(path)
        target = sandbox_path_str(workspace_path)
        if user is not None:  # (as that user, so that its permissions apply)
            result = await self.exec("cat", "--", target, shell=False, user=user)
            if not result.ok():
                await self._raise_read_error_from_exec(
                    path=path, workspace_path=workspace_path, command=("cat", "--", target),
                    result=result, user=user)
            return io.BytesIO(result.stdout)
        sandbox = await self._handle()
        try:
            return io.BytesIO(await sandbox.filesystem.read_bytes.aio(target))
        except FileNotFoundError as e:
            raise WorkspaceReadNotFoundError(path=path, cause=e) from e
        except Exception as e:
            raise WorkspaceArchiveReadError(path=workspace_path, cause=e) from e

    async def write(self, path: Path, data: io.IOBase, *,
                    user: str | User | None = None) -> None:
        payload = data.read()
        if isinstance(payload, str):
            payload = payload.encode()
        if not isinstance(payload, bytes | bytearray):
            raise WorkspaceWriteTypeError(path=path, actual_type=type(payload).__name__)
        workspace_path = await self._validate_path_access(path, for_write=True)
        target = sandbox_path_str(workspace_path)
        if user is not None:
            result = await self._run(["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1"',
                                      "sh", target], timeout=60.0, user=_user_name(user),
                                     stdin=bytes(payload))
            if not result.ok():
                raise WorkspaceArchiveWriteError(path=workspace_path, context={
                    "reason": "write_nonzero_exit", "exit_code": result.exit_code,
                    "stderr": result.stderr.decode("utf-8", "replace")})
            return
        sandbox = await self._handle()
        try:
            await sandbox.filesystem.write_bytes.aio(bytes(payload), target)
        except Exception as e:
            raise WorkspaceArchiveWriteError(path=workspace_path, cause=e) from e

    # -- the workspace -----------------------------------------------------------------

    def _snapshot_mode(self) -> PersistenceMode:
        """The state's mode, or ``tar`` where a snapshot would keep what must not be kept
        (ephemeral manifest entries, mounts inside the workspace)."""
        if (self._persist_workspace_skip_relpaths() or self._native_snapshot_requires_tar_fallback()
                or list(self.state.manifest.mount_targets())):
            return "tar"
        return self.state.workspace_persistence

    async def persist_workspace(self) -> io.IOBase:
        mode = self._snapshot_mode()
        root = self._workspace_root_path()
        if mode == "tar":
            skip = [p.as_posix() for p in self._persist_workspace_skip_relpaths()]
            result = await self.exec("tar", "cf", "-", *agentrefs.tar_excludes(skip),
                                     "-C", root.as_posix(), ".", shell=False)
            if not result.ok():
                raise WorkspaceArchiveReadError(path=root, context={
                    "reason": "tar_nonzero_exit", "exit_code": result.exit_code,
                    "stderr": result.stderr.decode("utf-8", "replace")})
            return io.BytesIO(result.stdout)
        sandbox = await self._handle()
        try:
            if mode == "snapshot_filesystem":
                image = await sandbox.snapshot_filesystem.aio(timeout=_CALL_TIMEOUT_S)
            else:
                image = await sandbox.snapshot_directory.aio(root.as_posix(),
                                                             timeout=_CALL_TIMEOUT_S)
        except Exception as e:
            raise WorkspaceArchiveReadError(path=root, context={"reason": f"{mode}_failed"},
                                            cause=e) from e
        return io.BytesIO(agentrefs.encode_ref(image.object_id or "", mode))

    async def hydrate_workspace(self, data: io.IOBase) -> None:
        raw = data.read()
        if isinstance(raw, str):
            raw = raw.encode()
        root = self._workspace_root_path()
        if not isinstance(raw, bytes | bytearray):
            raise WorkspaceArchiveWriteError(path=root, context={"reason": "non_bytes_payload"})
        ref = agentrefs.decode_ref(bytes(raw))
        if ref is None:
            await self._extract_tar(bytes(raw), root)
            return
        mode, image_ref = ref
        try:
            if mode == "snapshot_filesystem":  # (a new sandbox from the snapshot)
                await self._terminate()
                self._image = hutch.Image.from_id(image_ref)
                self.state.image_id = image_ref
                await self._create_sandbox(self._image)
                await self._run(["mkdir", "-p", "--", root.as_posix()], timeout=30.0, user=None)
            else:  # (the workspace's image mounted over the workspace, writable)
                sandbox = await self._handle()
                if self._mounted_root is not None:
                    await sandbox.unmount_image.aio(self._mounted_root)
                    self._mounted_root = None
                await sandbox.mount_image.aio(root.as_posix(), hutch.Image.from_id(image_ref))
                self._mounted_root = root.as_posix()
        except Exception as e:
            raise WorkspaceArchiveWriteError(path=root, context={
                "reason": f"{mode}_restore_failed", "snapshot_id": image_ref}, cause=e) from e

    async def _extract_tar(self, raw: bytes, root: Path) -> None:
        try:
            validate_tar_bytes(raw, reject_rel_paths=self.state.manifest
                               .ephemeral_persistence_paths(),
                               allow_external_symlink_targets=False)
        except UnsafeTarMemberError as e:
            raise WorkspaceArchiveWriteError(
                path=root, context={"reason": e.reason, "member": e.member}, cause=e) from e
        script = f"mkdir -p -- {shlex.quote(root.as_posix())} && " \
                 f"tar xf - -C {shlex.quote(root.as_posix())}"
        result = await self._run(["sh", "-c", script], timeout=120.0, user=None, stdin=raw)
        if not result.ok():
            raise WorkspaceArchiveWriteError(path=root, context={
                "reason": "tar_extract_nonzero_exit", "exit_code": result.exit_code,
                "stderr": result.stderr.decode("utf-8", "replace")})


class HutchSandboxClient(BaseSandboxClient[HutchSandboxClientOptions]):  # type: ignore[misc]
    """Creates hutch sandbox sessions for Sandbox Agents.  ``image``: the image sessions
    start from (default ``Image.debian_slim()``, hutch's cached default: no download);
    ``sandbox``: a running sandbox to use instead of starting one."""

    backend_id = "hutch"
    supports_default_options = True

    def __init__(self, *, image: hutch.Image | None = None,
                 sandbox: hutch.Sandbox | None = None,
                 instrumentation: Instrumentation | None = None,
                 dependencies: Dependencies | None = None) -> None:
        self._image = image
        self._sandbox = sandbox
        self._instrumentation = instrumentation or Instrumentation()
        self._dependencies = dependencies

    async def create(self, *, snapshot: SnapshotSpec | SnapshotBase | None = None,
                     manifest: Manifest | None = None,
                     options: HutchSandboxClientOptions | None = None) -> SandboxSession:
        options = options or HutchSandboxClientOptions()
        manifest = self._validate_manifest_for_create(manifest or Manifest())
        if options.workspace_persistence not in agentrefs.MODES:
            raise ValueError(f"workspace_persistence must be one of {agentrefs.MODES}")
        session_id = uuid.uuid4()
        state = HutchSandboxSessionState(
            session_id=session_id, manifest=manifest,
            snapshot=resolve_snapshot(snapshot, str(session_id)),
            app_name=options.app_name, image_id=self._image_ref(),
            workspace_persistence=options.workspace_persistence,
            exposed_ports=options.exposed_ports,
            timeout=options.timeout, idle_timeout=options.idle_timeout, cpu=options.cpu,
            memory=options.memory, block_network=options.block_network)
        if options.sandbox_create_timeout_s is not None:
            state.sandbox_create_timeout_s = float(options.sandbox_create_timeout_s)
        inner = HutchSandboxSession.from_state(state, image=self._image, sandbox=self._sandbox)
        await inner._ensure_sandbox()
        wrapped: SandboxSession = self._wrap_session(inner, instrumentation=self._instrumentation)
        return wrapped

    def _image_ref(self) -> str | None:
        """The engine's reference of the client's image where it has one already (a
        snapshot, ``Image.from_id``), so that a resumed session can start from it."""
        if self._image is None:
            return None
        try:
            ref = self._image.object_id
        except Exception:  # (an image not built yet has no reference: resume uses default)
            return None
        return ref if isinstance(ref, str) and ref else None

    async def delete(self, session: SandboxSession) -> SandboxSession:
        inner = session._inner
        if not isinstance(inner, HutchSandboxSession):
            raise TypeError("HutchSandboxClient.delete expects a HutchSandboxSession")
        await inner.pty_terminate_all()
        await inner._terminate()
        return session

    async def resume(self, state: SandboxSessionState) -> SandboxSession:
        """The state's sandbox again if it still runs (its workspace as it was), else a new
        one that the SDK hydrates from the state's snapshot when it starts."""
        if not isinstance(state, HutchSandboxSessionState):
            raise TypeError("HutchSandboxClient.resume expects a HutchSandboxSessionState")
        state.assert_path_grants_rebound()
        inner = HutchSandboxSession.from_state(state)
        if await inner._ensure_sandbox():
            inner._set_start_state_preserved(True)
        wrapped: SandboxSession = self._wrap_session(inner, instrumentation=self._instrumentation)
        return wrapped

    def deserialize_session_state(self, payload: dict[str, object]) -> SandboxSessionState:
        return self._deserialize_session_state_payload(payload, HutchSandboxSessionState)
