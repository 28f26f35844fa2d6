"""The app and sandbox routes: create, list, get, tags, terminate, waits, tunnels, logs
and the entrypoint's stdin."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated

import trio
from fastapi import Body, FastAPI, Query, Request
from fastapi.responses import StreamingResponse

from hutch.api import urls
from hutch.api.appmodels import AppInfo
from hutch.api.enginemodels import CheckpointInfo
from hutch.api.models import (
    MAX_FILE_OFFSET,
    NDJSON,
    CreateSandboxRequest,
    LookupAppRequest,
    SandboxInfo,
    SandboxList,
    SetTagsRequest,
    TerminalSize,
    TerminateRequest,
)
from hutch.engine.errors import Conflict, Invalid
from hutch.engine.kernel import checkpoint, linux
from hutch.engine.lifecycle import consoles
from hutch.engine.lifecycle.livesandbox import first_of
from hutch.engine.lifecycle.manager import SandboxManager
from hutch.engine.network import outbound, tlsproxy
from hutch.engine.routes.common import (
    DEFAULT_WAIT,
    MAX_WAIT,
    chunk_event,
    errors_doc,
    ndjson_event,
    read_limited,
    stream_doc,
)
from hutch.engine.storage.store import SandboxRow

log = logging.getLogger("hutch.server")

#: Bytes of a log read at a time.
LOG_CHUNK = 1 << 20


def sandbox_info(row: SandboxRow) -> SandboxInfo:
    return SandboxInfo(
        sandbox_id=row.sandbox_id, app_id=row.app_id, name=row.name,
        state=row.state,  # type: ignore[arg-type]
        image=row.image, created_at=row.created_at, finished_at=row.finished_at,
        returncode=row.returncode, exit_reason=row.exit_reason,  # type: ignore[arg-type]
        exit_detail=row.exit_detail,
        tags=row.tags, timeout=row.timeout, runtime=row.runtime,
        verbose=row.spec.verbose,
    )


def add_sandbox_routes(app: FastAPI, manager: SandboxManager) -> None:
    # apps -----------------------------------------------------------------------------------
    @app.post(urls.APPS_LOOKUP, responses=errors_doc(400, 404, 422))
    async def app_lookup(req: LookupAppRequest) -> AppInfo:
        app_id, name = manager.store.app_by_name(req.name, create=req.create_if_missing)
        return AppInfo(app_id=app_id, name=name)

    # sandboxes ------------------------------------------------------------------------------
    @app.post(urls.SANDBOXES, responses=errors_doc(400, 404, 409, 422))
    async def create_sandbox(req: CreateSandboxRequest) -> SandboxInfo:
        return sandbox_info(await manager.create(req))

    @app.get(urls.SANDBOXES, responses=errors_doc(400, 404, 422))
    async def list_sandboxes(app_id: str | None = None,
                             tags: Annotated[str | None, Query()] = None) -> SandboxList:
        tag_filter = _parse_tags(tags)
        rows = manager.store.list_sandboxes(app_id=app_id, tags=tag_filter)
        return SandboxList(sandboxes=[sandbox_info(r) for r in rows])

    @app.get(urls.SANDBOXES_BY_NAME, responses=errors_doc(404, 422))
    async def sandbox_by_name(app_name: str, name: str,
                              include_terminated: bool = False) -> SandboxInfo:
        app_id, _ = manager.store.app_by_name(app_name, create=False)
        return sandbox_info(manager.store.sandbox_by_name(app_id, name, include_terminated))

    @app.get(urls.SANDBOX, responses=errors_doc(404, 422))
    async def get_sandbox(sandbox_id: str) -> SandboxInfo:
        return sandbox_info(manager.get(sandbox_id))

    @app.put(urls.SANDBOX_TAGS, responses=errors_doc(400, 404, 422))
    async def set_tags(sandbox_id: str, req: SetTagsRequest) -> SandboxInfo:
        manager.store.set_tags(sandbox_id, req.tags)
        return sandbox_info(manager.get(sandbox_id))

    @app.post(urls.SANDBOX_TERMINATE,
              responses=errors_doc(400, 404, 422))
    async def terminate(sandbox_id: str,
                        req: Annotated[TerminateRequest | None, Body()] = None) -> SandboxInfo:
        grace = (req or TerminateRequest()).grace_period
        return sandbox_info(await manager.terminate(sandbox_id, grace))

    @app.post(urls.SANDBOX_WAIT_UNTIL_READY,
              responses=errors_doc(400, 404, 409, 422, 504))
    async def wait_until_ready(sandbox_id: str,
                               timeout: Annotated[float, Query(gt=0, le=MAX_WAIT)] = DEFAULT_WAIT
                               ) -> SandboxInfo:
        """Return once the readiness probe has passed; 504 ``timeout`` when it has not
        within ``timeout`` seconds, 409 when the sandbox ended first."""
        await manager.wait_ready(sandbox_id, timeout)
        return sandbox_info(manager.get(sandbox_id))

    @app.get(urls.SANDBOX_TUNNELS, responses=errors_doc(404, 422))
    async def tunnels(sandbox_id: str) -> dict[str, dict[str, object]]:
        """Sandbox port -> the host address that reaches it."""
        if manager.get(sandbox_id).state != "running":
            return {}
        forwards = outbound.tunnels_of(manager.dirs(sandbox_id).root)
        return {str(port): {"host": "127.0.0.1", "port": t["host_port"], "tls": t["tls"]}
                for port, t in forwards.items()}

    @app.get(urls.ENGINE_CA)
    async def engine_ca() -> dict[str, str]:
        """The engine's CA certificate (PEM), which signs its encrypted ports' TLS."""
        ca = await trio.to_thread.run_sync(tlsproxy.ensure_ca, manager.data_dir)
        return {"path": str(ca / "ca.crt"), "pem": (ca / "ca.crt").read_text()}

    checkpoints: dict[str, checkpoint.CheckpointProbe] = {}  # by runtime binary, made on use

    @app.get(urls.ENGINE_CHECKPOINT)
    async def engine_checkpoint() -> CheckpointInfo:
        """Whether this engine could checkpoint a sandbox (memory snapshots), measured in its
        own user namespace (hutch/engine/kernel/checkpoint.py); it takes no input, so it
        answers nothing but 200."""
        runtime = manager.runtime
        if runtime.binary not in checkpoints:
            checkpoints[runtime.binary] = checkpoint.CheckpointProbe(runtime.name,
                                                                     runtime.binary)
        return CheckpointInfo(supported=False,
                              reason=await checkpoints[runtime.binary].verdict())

    @app.post(urls.SANDBOX_WAIT, responses=errors_doc(404, 422))
    async def wait(sandbox_id: str,
                   timeout: Annotated[float, Query(ge=0, le=MAX_WAIT)] = DEFAULT_WAIT
                   ) -> SandboxInfo:
        return sandbox_info(await manager.wait(sandbox_id, timeout))

    @app.get(urls.SANDBOX_LOGS, response_class=StreamingResponse,
             responses=stream_doc("output events, then exit_code once the sandbox has ended")
             | errors_doc(400, 404, 422))
    async def logs(sandbox_id: str, follow: bool = True,
                   fd: Annotated[int | None, Query(ge=1, le=2)] = None,
                   offset: Annotated[int, Query(ge=0, le=MAX_FILE_OFFSET)] = 0
                   ) -> StreamingResponse:
        """The entrypoint's output; ``offset`` (with ``fd``) skips what a reader has seen."""
        manager.get(sandbox_id)
        if offset and fd is None:
            raise Invalid("offset needs fd: each stream has its own offset")
        return StreamingResponse(follow_logs(manager, sandbox_id, follow, fd, offset),
                                 media_type=NDJSON)

    @app.post(urls.SANDBOX_STDIN, responses=errors_doc(400, 404, 409, 422))
    async def sandbox_stdin(sandbox_id: str, request: Request, eof: bool = False
                            ) -> SandboxInfo:
        """Write the request body to the entrypoint's stdin; ``eof`` then closes it."""
        data = await read_limited(request)
        await manager.write_stdin(sandbox_id, data, eof)
        return sandbox_info(manager.get(sandbox_id))

    @app.put(urls.SANDBOX_TERMINAL, responses=errors_doc(400, 404, 409, 422))
    async def resize_terminal(sandbox_id: str, size: TerminalSize) -> SandboxInfo:
        """Set the size of the entrypoint's terminal (``pty=True``): SIGWINCH for it."""
        row = manager.get(sandbox_id)
        live = manager.live.get(sandbox_id)
        if row.state == "exited" or live is None:
            raise Conflict(f"Sandbox {sandbox_id} has already finished")
        if not row.spec.terminal:
            raise Conflict("this sandbox has no terminal (create it with pty=True)")
        consoles.resize(live.dirs.root, size.rows, size.cols)
        return sandbox_info(row)


def _parse_tags(tags: str | None) -> dict[str, str] | None:
    if tags is None:
        return None
    try:
        parsed = json.loads(tags)
    except ValueError as exc:
        raise Invalid("tags must be a JSON object of strings") from exc
    if not isinstance(parsed, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()
    ):
        raise Invalid("tags must be a JSON object of strings")
    return parsed


async def follow_logs(manager: SandboxManager, sandbox_id: str, follow: bool,
                       only_fd: int | None, offset: int = 0) -> AsyncIterator[bytes]:
    """The entrypoint's stdout and stderr, as written, until the sandbox has ended.

    The log files are followed with inotify, so a line reaches the client as soon as the
    sandbox writes it; the sandbox's end wakes the reader too.
    """
    dirs = manager.dirs(sandbox_id)
    paths = {fd: p for fd, p in ((1, dirs.stdout), (2, dirs.stderr))
             if only_fd in (None, fd)}
    with contextlib.ExitStack() as files_stack:
        files = {fd: files_stack.enter_context(open(path, "rb"))
                 for fd, path in paths.items() if path.exists()}
        # Read at positions (pread), never seek: a seek past the largest file the file
        # system can hold fails, while a read there just finds nothing (yet).
        positions = dict.fromkeys(files, offset)
        watch = None
        live = manager.live.get(sandbox_id)
        if follow and live is not None and files:
            watch = linux.inotify_watch([str(paths[fd]) for fd in files],
                                        linux.IN_MODIFY | linux.IN_CLOSE_WRITE)
            files_stack.callback(os.close, watch)
        while True:
            live = manager.live.get(sandbox_id)
            progressed = False
            for fd, f in files.items():
                data = os.pread(f.fileno(), LOG_CHUNK, positions[fd])
                if data:
                    positions[fd] += len(data)
                    progressed = True
                    yield chunk_event(fd, data)
            if progressed:
                continue
            if live is None or watch is None:
                break
            await first_of(live.done.wait, partial(trio.lowlevel.wait_readable, watch))
            _drain(watch)
    row = manager.get(sandbox_id)
    if row.state == "exited" or not follow:
        yield ndjson_event(exit_code=row.returncode)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
