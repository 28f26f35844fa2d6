"""The exec routes: start, state, wait, output streamed as NDJSON, stdin and kill."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated

import trio
from fastapi import FastAPI, Query, Request
from fastapi.responses import StreamingResponse

from hutch.api import urls
from hutch.api.models import (
    NDJSON,
    ExecInfo,
    ExecRequest,
    TerminalSize,
)
from hutch.engine.commands.execs import ExecSession
from hutch.engine.lifecycle.manager import SandboxManager
from hutch.engine.routes.common import (
    DEFAULT_WAIT,
    MAX_WAIT,
    chunk_event,
    errors_doc,
    ndjson_event,
    read_limited,
    stream_doc,
)

log = logging.getLogger("hutch.server")


def exec_info(session: ExecSession) -> ExecInfo:
    return ExecInfo(
        exec_id=session.exec_id, sandbox_id=session.sandbox_id, argv=session.argv,
        state="exited" if session.done.is_set() else "running",
        returncode=session.returncode, timed_out=session.timed_out,
        terminal=TerminalSize(rows=session.size[0], cols=session.size[1])
        if session.size is not None else None,
    )


async def start_exec(manager: SandboxManager, sandbox_id: str, req: ExecRequest) -> ExecInfo:
    """Start an exec; answer when it has ended or ``settle_ms`` have passed."""
    session = await manager.exec(sandbox_id, req)
    if req.settle_ms:
        with trio.move_on_after(req.settle_ms / 1000):
            await session.done.wait()
    manager.execs.record(session)
    return exec_info(session)


async def exec_events(session: ExecSession, fd: int | None) -> AsyncIterator[bytes]:
    """An exec's output as NDJSON events (``fd``: one stream only), then its exit code."""
    async for chunk_fd, data in session.follow((fd,) if fd else (1, 2)):
        yield chunk_event(chunk_fd, data)
    yield ndjson_event(exit_code=session.returncode)


def add_exec_routes(app: FastAPI, manager: SandboxManager) -> None:
    # execs ----------------------------------------------------------------------------------
    @app.post(urls.SANDBOX_EXECS, responses=errors_doc(400, 404, 409, 422))
    async def create_exec(sandbox_id: str, req: ExecRequest) -> ExecInfo:
        return await start_exec(manager, sandbox_id, req)

    @app.get(urls.EXEC, responses=errors_doc(404, 409, 422))
    async def get_exec(exec_id: str) -> ExecInfo:
        return exec_info(manager.exec_session(exec_id))

    @app.post(urls.EXEC_WAIT, responses=errors_doc(404, 409, 422))
    async def wait_exec(exec_id: str,
                        timeout: Annotated[float, Query(ge=0, le=MAX_WAIT)] = DEFAULT_WAIT
                        ) -> ExecInfo:
        session = manager.exec_session(exec_id)
        with trio.move_on_after(timeout):
            await session.done.wait()
        return exec_info(session)

    @app.get(urls.EXEC_OUTPUT, response_class=StreamingResponse,
             responses=stream_doc("output events, then exit_code") | errors_doc(404, 409, 422))
    async def exec_output(exec_id: str, fd: Annotated[int | None, Query(ge=1, le=2)] = None
                          ) -> StreamingResponse:
        session = manager.exec_session(exec_id)
        return StreamingResponse(exec_events(session, fd), media_type=NDJSON)

    @app.post(urls.EXEC_STDIN, responses=errors_doc(400, 404, 409, 422))
    async def exec_stdin(exec_id: str, request: Request, eof: bool = False) -> ExecInfo:
        session = manager.exec_session(exec_id)
        data = await read_limited(request)
        await session.write_stdin(data, eof)
        return exec_info(session)

    @app.put(urls.EXEC_TERMINAL, responses=errors_doc(400, 404, 409, 422))
    async def resize_terminal(exec_id: str, size: TerminalSize) -> ExecInfo:
        """Set a pty exec's terminal size (its programs get SIGWINCH)."""
        session = manager.exec_session(exec_id)
        session.resize(size.rows, size.cols)
        return exec_info(session)

    @app.post(urls.EXEC_KILL, responses=errors_doc(404, 409, 422))
    async def kill_exec(exec_id: str) -> ExecInfo:
        session = manager.exec_session(exec_id)
        if not session.done.is_set():
            await session.kill()
            await session.done.wait()
        return exec_info(session)


