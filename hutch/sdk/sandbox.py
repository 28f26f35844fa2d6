"""``hutch.Sandbox``: sandboxes on the local engine, with Modal's Sandbox API.

Every method is written once, as a coroutine; ``synchronize`` gives it its blocking face
and ``.aio`` (see :mod:`hutch.sdk.syncbridge`).  A ``Sandbox`` holds its id and the last
record the engine sent, never a connection, so two processes (or loops, or threads) can
drive the same sandbox.  ``async with sb.open_process(...)`` and
:func:`hutch.open_sandbox` are the structured-concurrency forms: what they open is
killed when the block exits, also on error or cancellation.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
from collections.abc import AsyncIterator, Collection, Iterator, Mapping, Sequence
from typing import Any, Literal

import anyio

from hutch.api import urls
from hutch.exception import (
    ConflictError,
    InvalidError,
    SandboxTerminatedError,
    SandboxTimeoutError,
)
from hutch.exception import (
    TimeoutError as HutchTimeoutError,
)
from hutch.sdk import options, output, terminal
from hutch.sdk.app import App
from hutch.sdk.createrequest import create_request
from hutch.sdk.fileio import FileIO
from hutch.sdk.files import (
    FileWatchEvent,
    FileWatchEventType,
    SandboxFilesystem,
    _check_path,
)
from hutch.sdk.image import Image, resolves_directly
from hutch.sdk.localobject import LocalObject
from hutch.sdk.memorysnapshot import SandboxMemorySnapshots
from hutch.sdk.network import Network
from hutch.sdk.probe import Probe
from hutch.sdk.process import EXEC_SETTLE_MS, WAIT_SLICE, ContainerProcess
from hutch.sdk.sandboxaccess import SandboxAccess
from hutch.sdk.secret import Secret, merge_secrets
from hutch.sdk.snapshots import SandboxSnapshots
from hutch.sdk.streams import (
    StreamReader,
    StreamType,
    StreamWriter,
    check_stream_type,
    reader_mode,
)
from hutch.sdk.syncbridge import (
    BoundGenerator,
    static_direct,
    synchronize,
    synchronize_direct,
)
from hutch.sdk.transport import client
from hutch.sdk.volume import Volume


def _list_sandboxes(*, app_id: str | None = None, tags: Mapping[str, str] | None = None,
                    client: object = None) -> AsyncIterator[Sandbox]:
    """The running sandboxes, newest first, of an app and/or with these tags."""
    options.reject_unsupported({"client": client}, "Sandbox.list")
    params: dict[str, Any] = {}
    if app_id is not None:
        if not isinstance(app_id, str):
            raise InvalidError("app_id must be a string")
        params["app_id"] = app_id
    if tags:
        params["tags"] = json.dumps(options.check_str_dict(tags, "tags"))

    async def sandboxes() -> AsyncIterator[Sandbox]:
        body = await _client_request("GET", urls.SANDBOXES, params=params)
        for info in body["sandboxes"]:
            yield Sandbox(info)

    return sandboxes()


class Sandbox(SandboxAccess, SandboxSnapshots, SandboxMemorySnapshots, LocalObject):
    """A sandbox: an isolated container started from an image on this machine."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.object_id: str = info["sandbox_id"]
        self._info = info
        self._detached = False
        path = urls.SANDBOX_LOGS.format(sandbox_id=self.object_id)
        self._stdout: StreamReader[str] = StreamReader(path, 1, text=True, by_line=True,
                                                       resumable=True)
        self._stderr: StreamReader[str] = StreamReader(path, 2, text=True, by_line=True,
                                                       resumable=True)
        self._stdin = StreamWriter(urls.SANDBOX_STDIN.format(sandbox_id=self.object_id))

    # constructors -----------------------------------------------------------------------
    @static_direct(when=lambda *args, image=None, **kw: resolves_directly(image))
    async def create(
        *args: str,
        app: App | None = None,
        name: str | None = None,
        tags: Mapping[str, str] | None = None,
        image: Image | None = None,
        env: Mapping[str, str | None] | None = None,
        secrets: Collection[Secret] | None = None,
        timeout: int | float = 300,
        workdir: str | None = None,
        block_network: bool = False,
        verbose: bool = False,
        idle_timeout: int | None = None,
        cpu: float | tuple[float, float] | None = None,
        memory: int | tuple[int, int] | None = None,
        ephemeral_disk: int | None = None,
        pids_limit: int | None = None,
        volumes: Mapping[str | os.PathLike[str], Volume] | None = None,
        gpu: str | None = None,
        cloud: str | None = None,
        region: str | Sequence[str] | None = None,
        network_file_systems: Mapping[str, Any] | None = None,
        outbound_cidr_allowlist: Sequence[str] | None = None,
        outbound_domain_allowlist: Sequence[str] | None = None,
        inbound_cidr_allowlist: Sequence[str] | None = None,
        cidr_allowlist: Sequence[str] | None = None,
        encrypted_ports: Sequence[int] = (),
        h2_ports: Sequence[int] = (),
        unencrypted_ports: Sequence[int] = (),
        readiness_probe: Probe | None = None,
        pty: bool = False,
        pty_info: Any = None,
        custom_domain: str | None = None,
        proxy: Any = None,
        include_oidc_identity_token: bool = False,
        experimental_options: Mapping[str, Any] | None = None,
        _experimental_enable_snapshot: bool = False,
        client: Any = None,
        environment_name: str | None = None,
        runtime: str | None = None,
        network: Network | str | None = None,
        network_aliases: Sequence[str] = (),
    ) -> Sandbox:
        """Start a sandbox running ``args`` (or idling until terminated when none are given);
        ``network``/``network_aliases``: a :class:`~hutch.Network` it joins, found there by
        those names (hutch's own).

        Raises :class:`AlreadyExistsError` when a running sandbox of the app has ``name``.
        """
        if app is not None and not isinstance(app, App):
            raise InvalidError(f"app must be a hutch.App, not {type(app).__name__}")
        body = await create_request(
            args, app=app, name=name, tags=tags, image=image, env=env, secrets=secrets,
            timeout=timeout, workdir=workdir, block_network=block_network, verbose=verbose,
            idle_timeout=idle_timeout, cpu=cpu, memory=memory, ephemeral_disk=ephemeral_disk,
            pids_limit=pids_limit, volumes=volumes, outbound_cidr_allowlist=outbound_cidr_allowlist,
            cidr_allowlist=cidr_allowlist, encrypted_ports=encrypted_ports,
            unencrypted_ports=unencrypted_ports, readiness_probe=readiness_probe,
            network=network, network_aliases=network_aliases, unsupported={
                "gpu": gpu, "cloud": cloud, "region": region,
                "network_file_systems": network_file_systems,
                "outbound_domain_allowlist": outbound_domain_allowlist,
                "inbound_cidr_allowlist": inbound_cidr_allowlist, "h2_ports": h2_ports,
                "custom_domain": custom_domain,
                "proxy": proxy, "include_oidc_identity_token": include_oidc_identity_token,
                "experimental_options": experimental_options,
                "_experimental_enable_snapshot": _experimental_enable_snapshot,
                "client": client, "environment_name": environment_name,
                "runtime": runtime})
        pty_body = terminal.pty_request(pty, pty_info)
        if pty_body is not None:  # its output is sb.stdout; sb.stdin types into it
            body["pty"] = pty_body
        info = await _client_request("POST", urls.SANDBOXES, json_body=body)
        return Sandbox(info)

    @static_direct()
    async def from_id(sandbox_id: str, client: Any = None) -> Sandbox:
        """The sandbox with this id (running or finished)."""
        options.reject_unsupported({"client": client}, "Sandbox.from_id")
        options.check_sandbox_id(sandbox_id)
        return Sandbox(await _client_request("GET", urls.SANDBOX.format(sandbox_id=sandbox_id)))

    @static_direct()
    async def from_name(app_name: str, name: str, *, environment_name: str | None = None,
                        include_terminated: bool = False, client: Any = None) -> Sandbox:
        """The *running* sandbox called ``name`` in the app ``app_name`` (with
        ``include_terminated``, the newest of that name when none runs)."""
        options.reject_unsupported({"environment_name": environment_name, "client": client},
                                   "Sandbox.from_name")
        options.check_object_name(app_name, "App")
        options.check_object_name(name, "Sandbox")
        if not isinstance(include_terminated, bool):
            raise InvalidError("include_terminated must be a bool")
        info = await _client_request("GET", urls.SANDBOXES_BY_NAME,
                                     params={"app_name": app_name, "name": name,
                                             "include_terminated": include_terminated})
        return Sandbox(info)

    @synchronize
    async def hydrate(self, client: Any = None) -> Sandbox:
        """Modal loads an object's metadata here; a sandbox has it from the start: returns
        the sandbox itself."""
        options.reject_unsupported({"client": client}, "Sandbox.hydrate")
        return self

    #: ``Sandbox.list(app_id=, tags=)``: a blocking iterator; ``.aio(...)`` an async one.
    list = BoundGenerator(_list_sandboxes, "list", _list_sandboxes.__doc__)

    # state ------------------------------------------------------------------------------
    async def _request(self, method: str, template: str = urls.SANDBOX, **kw: Any
                       ) -> dict[str, Any]:
        """Call the route ``template`` (an ``urls.SANDBOX*``) of this sandbox."""
        self._info = await _client_request(method, template.format(sandbox_id=self.object_id),
                                           **kw)
        return self._info

    @property
    def name(self) -> str | None:
        name: str | None = self._info.get("name")
        return name

    @property
    def stdout(self) -> StreamReader[str]:
        """The entrypoint's stdout, line by line."""
        self._attached()
        return self._stdout

    @property
    def stderr(self) -> StreamReader[str]:
        """The entrypoint's stderr, line by line."""
        self._attached()
        return self._stderr

    @property
    def stdin(self) -> StreamWriter:
        """The entrypoint's stdin: ``write``, ``write_eof``, then ``drain``."""
        self._attached()
        return self._stdin

    @property
    def returncode(self) -> int | None:
        """The exit code once the sandbox has finished (as last seen), else None.

        124 when it hit its timeout, 137 when it was terminated.
        """
        code: int | None = self._info.get("returncode") \
            if self._info.get("state") == "exited" else None
        return code

    @property
    def exit_reason(self) -> str | None:
        """Why it finished (as last seen; hutch's own): ``exited``, ``terminated``,
        ``timeout``, ``oom`` (the OOM killer ended it at its memory limit), ``lost`` or
        ``failed``; ``exit_detail`` says which limits it ran into, in words."""
        reason: str | None = self._info.get("exit_reason")
        return reason

    @property
    def exit_detail(self) -> str | None:
        detail: str | None = self._info.get("exit_detail")
        return detail

    @synchronize_direct
    async def poll(self) -> int | None:
        """The exit code if the sandbox has finished, else None (asks the engine)."""
        self._attached()
        if self._info.get("state") != "exited":
            await self._request("GET")
        return self.returncode

    @synchronize_direct
    async def wait(self, raise_on_termination: bool = True) -> None:
        """Wait for the sandbox to finish.

        Raises :class:`SandboxTimeoutError` if it hit its timeout, and
        :class:`SandboxTerminatedError` if it was terminated, by a call or by the engine
        (``lost``: its engine was killed with the namespaces it ran in), unless
        ``raise_on_termination`` is False.
        """
        while self._info.get("state") != "exited":
            await self._request("POST", urls.SANDBOX_WAIT, params={"timeout": WAIT_SLICE})
        reason = self._info.get("exit_reason")
        if reason == "timeout":
            raise SandboxTimeoutError(f"Sandbox {self.object_id} reached its timeout")
        if reason == "terminated" and raise_on_termination:
            raise SandboxTerminatedError(f"Sandbox {self.object_id} was terminated")
        detail = self._info.get("exit_detail")
        if reason == "lost" and detail and raise_on_termination:  # (ended by the engine)
            raise SandboxTerminatedError(f"Sandbox {self.object_id} was ended by the engine: "
                                         f"{detail}")

    @synchronize
    async def _get_task_id(self) -> str:
        """Modal's id of the container running the sandbox (frameworks build log links
        with it: SWE-ReX); a hutch sandbox is its own container, so its id."""
        self._attached()
        return self.object_id

    @synchronize
    async def reload_volumes(self) -> None:
        """Modal makes volumes' latest commits visible in the running sandbox here; a hutch
        volume is the same directory everywhere, its writes visible at once, so there is
        nothing to fetch.  Refused (``ConflictError``) once the sandbox has ended."""
        self._attached()
        info = await self._request("GET")
        if info.get("returncode") is not None or info.get("state") == "exited":
            raise ConflictError(f"Sandbox {self.object_id} has already finished")

    @synchronize_direct
    async def terminate(self, *, wait: bool = False, grace_period: float = 0.0) -> int | None:
        """Stop the sandbox (a no-op once finished); with ``wait=True`` return its exit code.

        hutch sends SIGKILL at once, as Modal does; ``grace_period`` (a hutch extension)
        sends SIGTERM first and waits that many seconds for the sandbox to exit.
        """
        self._attached()
        if isinstance(grace_period, bool) or not isinstance(grace_period, int | float) \
                or not 0 <= grace_period <= 60:
            raise InvalidError("grace_period must be between 0 and 60 seconds")
        await self._request("POST", urls.SANDBOX_TERMINATE,
                            json_body={"grace_period": grace_period})
        if not wait:
            return None
        await self.wait.aio(raise_on_termination=False)
        return self.returncode

    @synchronize
    async def wait_until_ready(self, *, timeout: float = 300) -> None:
        """Wait until the sandbox's readiness probe has passed.

        :class:`InvalidError` without a probe, :class:`ConflictError` if the sandbox ended,
        ``hutch.exception.TimeoutError`` after ``timeout`` seconds.
        """
        self._attached()
        deadline = anyio.current_time() + options.check_wait(timeout)
        while True:
            left = deadline - anyio.current_time()
            try:
                await self._request("POST", urls.SANDBOX_WAIT_UNTIL_READY,
                                    params={"timeout": max(0.001, min(left, WAIT_SLICE))})
                return
            except HutchTimeoutError:
                if left <= WAIT_SLICE:
                    raise

    def detach(self) -> None:
        """Let go of the sandbox without stopping it; use ``from_id`` to get it back."""
        self._detached = True

    @synchronize_direct
    async def set_tags(self, tags: Mapping[str, str]) -> None:
        """Replace the sandbox's tags (``{}`` clears them)."""
        self._attached()
        if not isinstance(tags, Mapping):
            raise InvalidError("tags must be a dict of str to str")
        await self._request("PUT", urls.SANDBOX_TAGS,
                            json_body={"tags": options.check_str_dict(tags, "tags")})

    @synchronize_direct
    async def get_tags(self) -> dict[str, str]:
        self._attached()
        tags: dict[str, str] = (await self._request("GET"))["tags"]
        return tags

    @synchronize_direct
    async def info(self) -> dict[str, Any]:
        """The engine's current record of this sandbox (a hutch extension)."""
        return dict(await self._request("GET"))

    # files ------------------------------------------------------------------------------
    @property
    def filesystem(self) -> SandboxFilesystem:
        """The sandbox's files: ``read_text``, ``write_bytes``, ``list_files``, ..."""
        self._attached()
        return SandboxFilesystem(self.object_id, bool(self._info.get("verbose")))

    @synchronize
    async def open(self, path: str, mode: str = "r") -> FileIO:
        """A file handle (``r w a x``, with ``b`` and ``+``); a context manager."""
        fs = self.filesystem
        return await FileIO.open(fs, _check_path(path), mode)

    def watch(self, path: str, filter: builtins.list[FileWatchEventType] | None = None,
              recursive: bool | None = None,
              timeout: float | None = None) -> Iterator[FileWatchEvent]:
        """File events under ``path`` (see ``filesystem.watch``)."""
        return self.filesystem.watch(path, filter=filter, recursive=bool(recursive),
                                     timeout=timeout)

    @synchronize
    async def ls(self, path: str) -> builtins.list[str]:
        """The names in a directory."""
        return [e.name for e in await self.filesystem.list_files.aio(path)]

    @synchronize
    async def mkdir(self, path: str, parents: bool = False) -> None:
        await self.filesystem.make_directory.aio(path, create_parents=parents)

    @synchronize
    async def rm(self, path: str, recursive: bool = False) -> None:
        await self.filesystem.remove.aio(path, recursive=recursive)

    # exec -------------------------------------------------------------------------------
    @synchronize_direct
    async def exec(
        self,
        *args: str,
        stdout: StreamType = StreamType.PIPE,
        stderr: StreamType = StreamType.PIPE,
        timeout: int | float | None = None,
        workdir: str | None = None,
        env: Mapping[str, str | None] | None = None,
        secrets: Collection[Secret] | None = None,
        text: bool = True,
        bufsize: Literal[-1, 1] = -1,
        pty: bool = False,
        pty_info: Any = None,
        _pty_info: Any = None,
        user: str | int | None = None,
    ) -> ContainerProcess[Any]:
        """Run a command in the sandbox; its output streams as it is produced.

        ``pty=True`` runs it on a pseudo-terminal of the sandbox's, sized as this process's
        terminal (its stdout carries all output; ``attach()`` connects this terminal);
        ``user`` (a hutch extension) runs it as that user of the image: a name or uid,
        optionally ``:group``.  Raises :class:`ConflictError` when the sandbox has already
        finished.
        """
        self._attached()
        argv = options.check_args(args, "exec")
        if not argv:
            raise InvalidError("exec needs a command: one or more string arguments")
        pty_body = terminal.pty_request(pty, pty_info if pty_info is not None else _pty_info)
        text_mode, by_line = reader_mode(text, bufsize)
        out_type = check_stream_type(stdout, "stdout")
        err_type = check_stream_type(stderr, "stderr")
        merged_secrets = merge_secrets(secrets, {})
        body: dict[str, Any] = {
            "argv": argv, "env": {**merged_secrets, **options.env_without_none(env)},
            "workdir": options.check_workdir(workdir), "stdin": True,
            "timeout": options.check_timeout(timeout, "timeout", optional=True),
            "stdout": "devnull" if out_type is StreamType.DEVNULL and not pty_body else "pipe",
            "stderr": "devnull" if err_type is StreamType.DEVNULL and not pty_body else "pipe",
            "settle_ms": EXEC_SETTLE_MS,
        }
        if pty_body is not None:
            body["pty"] = pty_body
        if user is not None:
            body["user"] = options.check_user(user)
        if self._info.get("verbose"):
            output.log_exec(self.object_id, argv, workdir, sorted(merged_secrets))
        info = await _client_request("POST", urls.SANDBOX_EXECS.format(sandbox_id=self.object_id),
                                     json_body=body)
        return ContainerProcess(info, text=text_mode, by_line=by_line, stdout=out_type,
                                stderr=err_type)

    @contextlib.asynccontextmanager
    async def open_process(self, *args: str, **kwargs: Any
                           ) -> AsyncIterator[ContainerProcess[Any]]:
        """``exec`` as an async context manager: the process (and everything it started)
        is killed when the block exits, unless it already ended."""
        process = await self.exec.aio(*args, **kwargs)
        try:
            yield process
        finally:
            with anyio.CancelScope(shield=True):
                if await process.poll.aio() is None:
                    await process.kill.aio()

    def __repr__(self) -> str:
        return f"Sandbox({self.object_id})"




async def _client_request(method: str, path: str, **kw: Any) -> Any:
    return await client().request(method, path, **kw)


@contextlib.asynccontextmanager
async def open_sandbox(*args: str, **kwargs: Any) -> AsyncIterator[Sandbox]:
    """``Sandbox.create`` as an async context manager: the sandbox is terminated when the
    block exits, also on error or cancellation (under trio or asyncio), including a
    cancellation that arrives while it is being created."""
    # Shielded: a create cancelled half-way would leave a sandbox nobody owns.  A pending
    # cancellation is delivered by the checkpoint, inside the try, so it terminates it.
    with anyio.CancelScope(shield=True):
        sandbox = await Sandbox.create.aio(*args, **kwargs)
    try:
        await anyio.lowlevel.checkpoint()
        yield sandbox
    finally:
        with anyio.CancelScope(shield=True):
            sandbox._detached = False
            await sandbox.terminate.aio()


