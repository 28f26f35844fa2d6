"""The engine's HTTP API (JSON over a Unix socket), described by OpenAPI at /openapi.json.

Handlers are thin: they validate with the wire models of :mod:`hutch.api.models`, call the
sandbox manager, and translate :class:`hutch.engine.errors.EngineError` into an
:class:`ErrorBody` with its status.  Output streams are NDJSON, one event per line.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import trio
from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from hutch import __version__
from hutch.api.errors import STATUS
from hutch.api.models import (
    API_VERSION,
    MAX_FILE_OFFSET,
    NDJSON,
    AppInfo,
    BuildImageRequest,
    CreateSandboxRequest,
    EngineInfo,
    ErrorBody,
    ExecInfo,
    ExecRequest,
    LookupAppRequest,
    SandboxInfo,
    SandboxList,
    SetTagsRequest,
    TerminateRequest,
    document_error_bodies,
    error_responses,
    stream_response,
)
from hutch.engine.commands.execs import ExecSession
from hutch.engine.errors import EngineError, Invalid, NotFound
from hutch.engine.httpd.server import ClientDisconnected
from hutch.engine.kernel import linux
from hutch.engine.lifecycle.livesandbox import first_of
from hutch.engine.lifecycle.manager import SandboxManager
from hutch.engine.network import outbound, tlsproxy
from hutch.engine.routes.files import add_file_routes
from hutch.engine.routes.pools import add_pool_routes
from hutch.engine.routes.volumes import add_volume_routes
from hutch.engine.storage.store import SandboxRow
from hutch.imagebuild.layout import ImageNotFound

log = logging.getLogger("hutch.server")

MAX_STDIN_CHUNK = 16 << 20
LOG_CHUNK = 1 << 20
MAX_CONTEXT = 4 << 30


def sandbox_info(row: SandboxRow) -> SandboxInfo:
    return SandboxInfo(
        sandbox_id=row.sandbox_id, app_id=row.app_id, name=row.name,
        state=row.state,  # type: ignore[arg-type]
        image=row.image, created_at=row.created_at, finished_at=row.finished_at,
        returncode=row.returncode, exit_reason=row.exit_reason,  # type: ignore[arg-type]
        exit_detail=row.exit_detail,
        tags=row.tags, timeout=row.timeout, runtime=row.runtime,
        verbose=bool(row.spec.get("verbose")),
    )


def exec_info(session: ExecSession) -> ExecInfo:
    return ExecInfo(
        exec_id=session.exec_id, sandbox_id=session.sandbox_id, argv=session.argv,
        state="exited" if session.done.is_set() else "running",
        returncode=session.returncode, timed_out=session.timed_out,
    )


async def start_exec(manager: SandboxManager, sandbox_id: str, req: ExecRequest) -> ExecInfo:
    """Start an exec; answer when it has ended or ``settle_ms`` have passed."""
    session = await manager.exec(sandbox_id, req)
    if req.settle_ms:
        with trio.move_on_after(req.settle_ms / 1000):
            await session.done.wait()
    return exec_info(session)


async def exec_events(session: ExecSession, fd: int | None) -> AsyncIterator[bytes]:
    """An exec's output as NDJSON events (``fd``: one stream only), then its exit code."""
    async for chunk_fd, data in session.follow((fd,) if fd else (1, 2)):
        yield _chunk_event(chunk_fd, data)
    yield _event(exit_code=session.returncode)


def _event(**fields: object) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode() + b"\n"


def _chunk_event(fd: int, data: bytes) -> bytes:
    return _event(fd=fd, data=base64.b64encode(data).decode())


_errors = error_responses
#: The ErrorBody type of a status that the framework answers by itself.
_HTTP_ERROR_TYPES = {404: "not_found", 409: "conflict", 500: "engine", 504: "timeout"}


def _stream(description: str) -> dict[int | str, dict[str, object]]:
    return stream_response(NDJSON, f"NDJSON: {description}")


def _error(status: int, type_: str, message: str) -> JSONResponse:
    body = ErrorBody(type=type_, message=message)  # type: ignore[arg-type]
    return JSONResponse(body.model_dump(), status_code=status)


def build_app(manager: SandboxManager, info: Callable[[], EngineInfo],
              shutdown: Callable[[], None]) -> FastAPI:
    app = FastAPI(title="hutch engine", version=__version__,
                  description="Local rootless sandboxes; the API behind the hutch SDK.")

    @app.exception_handler(EngineError)
    async def _engine_error(_: Request, exc: EngineError) -> JSONResponse:
        return _error(STATUS[exc.type], exc.type, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return _error(422, "invalid", "; ".join(parts))

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        """FastAPI's and Starlette's own refusals (an unparsable body, an unknown route, a
        method a route lacks) as ErrorBodies too, so that every error has one shape."""
        return _error(exc.status_code, _HTTP_ERROR_TYPES.get(exc.status_code, "invalid"),
                      str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, ClientDisconnected):  # a client that left a stream: no error here
            log.debug("client left: %s", exc)
        else:
            log.exception("unexpected error", exc_info=exc)
        return _error(500, "engine", f"internal engine error: {type(exc).__name__}: {exc}")

    # engine ---------------------------------------------------------------------------------
    @app.get("/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__, "api_version": API_VERSION}

    @app.get("/v1/engine")
    async def engine_info() -> EngineInfo:
        return info()

    @app.post("/v1/engine/shutdown")
    async def engine_shutdown() -> dict[str, str]:
        await manager.shutdown_all()
        shutdown()
        return {"status": "stopping"}

    @app.post("/v1/images/default")
    async def default_image() -> dict[str, str]:
        """Build the default image unless it is built (the first sandbox would otherwise)."""
        return {"ref": await manager.images.ensure_default()}

    @app.get("/v1/images/contexts/{digest}", responses=_errors(400, 422))
    async def has_context(digest: str) -> dict[str, bool]:
        """Whether a build context (a tar of local files) is already uploaded."""
        return {"present": _context_path(manager, digest).is_file()}

    @app.put("/v1/images/contexts/{digest}", responses=_errors(400, 422))
    async def put_context(digest: str, request: Request) -> dict[str, str]:
        """Upload a build context; the body must hash to ``digest``."""
        target = _context_path(manager, digest)
        tmp = target.with_suffix(".part")
        sha = hashlib.sha256()
        size = 0
        with open(tmp, "wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_CONTEXT:
                    tmp.unlink(missing_ok=True)
                    raise Invalid(f"a build context is limited to {MAX_CONTEXT >> 20} MiB")
                sha.update(chunk)
                f.write(chunk)
        if "sha256:" + sha.hexdigest() != digest:
            tmp.unlink(missing_ok=True)
            raise Invalid(f"the uploaded context does not hash to {digest}")
        tmp.rename(target)
        return {"digest": digest}

    @app.get("/v1/images")
    async def list_images() -> dict[str, list[dict[str, object]]]:
        """Every tagged image: reference, manifest digest, layer count, compressed size."""
        store = manager.images.store
        images = []
        for ref, digest in sorted(store.refs().items()):
            layers, _ = store.image_parts(ref)
            images.append({"ref": ref, "digest": digest, "layers": len(layers),
                           "size": sum(int(desc["size"]) for desc, _ in layers)})
        return {"images": images}

    @app.get("/v1/images/inspect", responses=_errors(404, 422))
    async def inspect_image(ref: str) -> dict[str, object]:
        """An image's manifest digest, layers and OCI config."""
        try:
            layers, config = manager.images.store.image_parts(ref)
        except ImageNotFound as exc:
            raise NotFound(f"image {ref!r} not found") from exc
        return {"ref": ref, "digest": manager.images.store.lookup(ref),
                "layers": [{"digest": d["digest"], "size": d["size"], "diff_id": diff}
                           for d, diff in layers],
                "config": config}

    @app.delete("/v1/images", responses=_errors(404, 422))
    async def remove_image(ref: str) -> dict[str, str]:
        """Untag an image; its layers go with the next prune unless something uses them."""
        if not manager.images.store.untag(ref):
            raise NotFound(f"image {ref!r} not found")
        manager.images.forget(ref)
        return {"removed": ref}

    @app.post("/v1/images/prune")
    async def prune_images() -> dict[str, int]:
        """Delete blobs and unpacked layers no image and no running sandbox needs."""
        in_use = {layer for row in manager.store.list_sandboxes(pooled=True)
                  for layer in row.spec.get("layers", [])}
        return await trio.to_thread.run_sync(manager.images.store.prune, in_use)

    @app.post("/v1/images/build", response_class=StreamingResponse,
              responses=_stream("build progress and log events, then its ref or an error")
              | _errors(400, 422))
    async def build_image(req: BuildImageRequest) -> StreamingResponse:
        """Build an image, streaming its log as NDJSON, ending with its ref or an error."""
        return StreamingResponse(_build_events(manager, req), media_type=NDJSON)

    # apps -----------------------------------------------------------------------------------
    @app.post("/v1/apps/lookup", responses=_errors(400, 404, 422))
    async def app_lookup(req: LookupAppRequest) -> AppInfo:
        app_id, name = manager.store.app_by_name(req.name, create=req.create_if_missing)
        return AppInfo(app_id=app_id, name=name)

    # sandboxes ------------------------------------------------------------------------------
    @app.post("/v1/sandboxes", responses=_errors(400, 404, 409, 422))
    async def create_sandbox(req: CreateSandboxRequest) -> SandboxInfo:
        return sandbox_info(await manager.create(req))

    @app.get("/v1/sandboxes", responses=_errors(400, 404, 422))
    async def list_sandboxes(app_id: str | None = None,
                             tags: Annotated[str | None, Query()] = None) -> SandboxList:
        tag_filter = _parse_tags(tags)
        rows = manager.store.list_sandboxes(app_id=app_id, tags=tag_filter)
        return SandboxList(sandboxes=[sandbox_info(r) for r in rows])

    @app.get("/v1/sandboxes/by-name", responses=_errors(404, 422))
    async def sandbox_by_name(app_name: str, name: str) -> SandboxInfo:
        app_id, _ = manager.store.app_by_name(app_name, create=False)
        return sandbox_info(manager.store.sandbox_by_name(app_id, name))

    @app.get("/v1/sandboxes/{sandbox_id}", responses=_errors(404, 422))
    async def get_sandbox(sandbox_id: str) -> SandboxInfo:
        return sandbox_info(manager.get(sandbox_id))

    @app.put("/v1/sandboxes/{sandbox_id}/tags", responses=_errors(400, 404, 422))
    async def set_tags(sandbox_id: str, req: SetTagsRequest) -> SandboxInfo:
        manager.store.set_tags(sandbox_id, req.tags)
        return sandbox_info(manager.get(sandbox_id))

    @app.post("/v1/sandboxes/{sandbox_id}/terminate",
              responses=_errors(400, 404, 422))
    async def terminate(sandbox_id: str,
                        req: Annotated[TerminateRequest | None, Body()] = None) -> SandboxInfo:
        grace = (req or TerminateRequest()).grace_period
        return sandbox_info(await manager.terminate(sandbox_id, grace))

    @app.post("/v1/sandboxes/{sandbox_id}/wait_until_ready",
              responses=_errors(400, 404, 409, 422, 504))
    async def wait_until_ready(sandbox_id: str,
                               timeout: Annotated[float, Query(gt=0, le=3600)] = 60.0
                               ) -> SandboxInfo:
        """Return once the readiness probe has passed; 504 ``timeout`` when it has not
        within ``timeout`` seconds, 409 when the sandbox ended first."""
        await manager.wait_ready(sandbox_id, timeout)
        return sandbox_info(manager.get(sandbox_id))

    @app.get("/v1/sandboxes/{sandbox_id}/tunnels", responses=_errors(404, 422))
    async def tunnels(sandbox_id: str) -> dict[str, dict[str, object]]:
        """Sandbox port -> the host address that reaches it."""
        if manager.get(sandbox_id).state != "running":
            return {}
        forwards = outbound.tunnels_of(manager.dirs(sandbox_id).root)
        return {str(port): {"host": "127.0.0.1", "port": t["host_port"], "tls": t["tls"]}
                for port, t in forwards.items()}

    @app.get("/v1/engine/ca")
    async def engine_ca() -> dict[str, str]:
        """The engine's CA certificate (PEM), which signs its encrypted ports' TLS."""
        ca = await trio.to_thread.run_sync(tlsproxy.ensure_ca, manager.data_dir)
        return {"path": str(ca / "ca.crt"), "pem": (ca / "ca.crt").read_text()}

    @app.post("/v1/sandboxes/{sandbox_id}/wait", responses=_errors(404, 422))
    async def wait(sandbox_id: str,
                   timeout: Annotated[float, Query(ge=0, le=3600)] = 60.0) -> SandboxInfo:
        return sandbox_info(await manager.wait(sandbox_id, timeout))

    @app.get("/v1/sandboxes/{sandbox_id}/logs", response_class=StreamingResponse,
             responses=_stream("output events, then exit_code once the sandbox has ended")
             | _errors(400, 404, 422))
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

    @app.post("/v1/sandboxes/{sandbox_id}/stdin", responses=_errors(400, 404, 409, 422))
    async def sandbox_stdin(sandbox_id: str, request: Request, eof: bool = False
                            ) -> SandboxInfo:
        """Write the request body to the entrypoint's stdin; ``eof`` then closes it."""
        data = await _read_limited(request)
        await manager.write_stdin(sandbox_id, data, eof)
        return sandbox_info(manager.get(sandbox_id))

    # execs ----------------------------------------------------------------------------------
    @app.post("/v1/sandboxes/{sandbox_id}/execs", responses=_errors(400, 404, 409, 422))
    async def create_exec(sandbox_id: str, req: ExecRequest) -> ExecInfo:
        return await start_exec(manager, sandbox_id, req)

    @app.get("/v1/execs/{exec_id}", responses=_errors(404, 409, 422))
    async def get_exec(exec_id: str) -> ExecInfo:
        return exec_info(manager.exec_session(exec_id))

    @app.post("/v1/execs/{exec_id}/wait", responses=_errors(404, 409, 422))
    async def wait_exec(exec_id: str,
                        timeout: Annotated[float, Query(ge=0, le=3600)] = 60.0) -> ExecInfo:
        session = manager.exec_session(exec_id)
        with trio.move_on_after(timeout):
            await session.done.wait()
        return exec_info(session)

    @app.get("/v1/execs/{exec_id}/output", response_class=StreamingResponse,
             responses=_stream("output events, then exit_code") | _errors(404, 409, 422))
    async def exec_output(exec_id: str, fd: Annotated[int | None, Query(ge=1, le=2)] = None
                          ) -> StreamingResponse:
        session = manager.exec_session(exec_id)
        return StreamingResponse(exec_events(session, fd), media_type=NDJSON)

    @app.post("/v1/execs/{exec_id}/stdin", responses=_errors(400, 404, 409, 422))
    async def exec_stdin(exec_id: str, request: Request, eof: bool = False) -> ExecInfo:
        session = manager.exec_session(exec_id)
        data = await _read_limited(request)
        await session.write_stdin(data, eof)
        return exec_info(session)

    @app.post("/v1/execs/{exec_id}/kill", responses=_errors(404, 409, 422))
    async def kill_exec(exec_id: str) -> ExecInfo:
        session = manager.exec_session(exec_id)
        if not session.done.is_set():
            await session.kill()
            await session.done.wait()
        return exec_info(session)

    add_file_routes(app, manager)
    if manager.pools is not None:
        add_pool_routes(app, manager.pools)
    add_volume_routes(app, manager.volumes)
    framework_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_error_bodies(framework_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


async def _read_limited(request: Request) -> bytes:
    """The request body, refused beyond ``MAX_STDIN_CHUNK`` before more is read."""
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_STDIN_CHUNK:
            raise Invalid(f"a stdin write is limited to {MAX_STDIN_CHUNK} bytes per request")
    return bytes(data)


async def _build_events(manager: SandboxManager, req: BuildImageRequest
                        ) -> AsyncIterator[bytes]:
    """Relay a build's progress and log lines; errors become an ``error`` event.

    The build runs in the daemon's nursery, not in this generator, so a client that goes
    away does not abandon a half-built image: it is finished and cached for the next call.
    """
    send, receive = trio.open_memory_channel[bytes](math.inf)

    async def build() -> None:
        async with send:
            try:
                ref = await manager.images.build(req, lambda ev: _send_open(send, _event(**ev)))
            except EngineError as exc:
                _send_open(send, _event(error={"type": exc.type, "message": exc.message}))
            except Exception as exc:  # a daemon task must not die of one build
                log.exception("image build failed", exc_info=exc)
                _send_open(send, _event(error={"type": "engine",
                                               "message": f"{type(exc).__name__}: {exc}"}))
            else:
                _send_open(send, _event(ref=ref))

    manager.nursery.start_soon(build)
    async with receive:
        async for event in receive:
            yield event


def _context_path(manager: SandboxManager, digest: str) -> Path:
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise Invalid("a context digest is sha256: and 64 hex digits")
    return manager.images.contexts / digest.split(":", 1)[1]


def _send_open(channel: trio.MemorySendChannel[bytes], event: bytes) -> None:
    """Send unless the reader went away (the build goes on without it)."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        channel.send_nowait(event)


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
                    yield _chunk_event(fd, data)
            if progressed:
                continue
            if live is None or watch is None:
                break
            await first_of(live.done.wait, partial(trio.lowlevel.wait_readable, watch))
            _drain(watch)
    row = manager.get(sandbox_id)
    if row.state == "exited" or not follow:
        yield _event(exit_code=row.returncode)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
