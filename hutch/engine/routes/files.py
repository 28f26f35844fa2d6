"""The engine's file routes: a running sandbox's files, confined by :mod:`sandboxfs`.

Reads stream the file in 1 MiB chunks from an offset; writes stream the request body to
the file as it arrives.  Neither side ever holds a whole file, so a 1 GiB file costs a few
MiB of memory.  Each call resolves its path anew (there are no server-side handles): an
SDK file handle is a path, a mode and a position.

Every step that touches the sandbox's files runs in one of that sandbox's own worker
threads, with a deadline (:mod:`hutch.engine.files.fileops`); listings stream in batches
(:mod:`hutch.engine.files.filestreams`), so no call holds the event loop, trio's shared thread
pool or another sandbox's threads.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Annotated, Any, Literal

import trio
from fastapi import FastAPI, Query, Request
from fastapi.responses import StreamingResponse

from hutch.api import urls
from hutch.api.models import (
    MAX_FILE_OFFSET,
    NDJSON,
    MakeDirRequest,
    RemoveRequest,
    error_responses,
    stream_response,
)
from hutch.engine.errors import Conflict
from hutch.engine.files import owners
from hutch.engine.files.fileops import FileOps, deadline_after
from hutch.engine.files.filestreams import list_directory, stream_fd, write_stream
from hutch.engine.files.sandboxfs import Entry, FileError, SandboxFS, entry
from hutch.engine.files.watch import Watch
from hutch.engine.lifecycle.manager import SandboxManager

BYTES = "application/octet-stream"
#: What a file route can answer besides 200: a file operation's typed errors (400, 403,
#: 404, 409), no such sandbox (404), a finished sandbox (409), a malformed request (422).
_FILE_ERRORS = error_responses(400, 403, 404, 409, 422)
WriteMode = Literal["w", "a", "x", "r+"]
_FLAGS: dict[str, int] = {
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
    "r+": os.O_WRONLY,
}


def add_file_routes(app: FastAPI, manager: SandboxManager, ops: FileOps | None = None
                    ) -> None:
    ops = ops or FileOps()

    @contextmanager
    def files(sandbox_id: str) -> Iterator[SandboxFS]:
        row = manager.get(sandbox_id)
        live = manager.live.get(sandbox_id)
        if row.state != "running" or live is None or live.terminating:
            raise Conflict(f"Sandbox {sandbox_id} has already finished")
        fs = SandboxFS(f"/proc/{live.pid}/root", live.workdir, live.owner)
        try:
            yield fs
        finally:
            fs.close()

    async def describing(sandbox_id: str, fs: SandboxFS) -> Callable[[Entry], dict[str, Any]]:
        """How entries are answered: with the owner and group the sandbox sees."""
        live = manager.live.get(sandbox_id)
        seen = owners.seen_by(live.ids if live is not None else None)
        users, groups = await ops.run_fs(sandbox_id, fs, owners.name_maps)
        return lambda e: owners.described(e, seen, users, groups)

    @app.get(urls.SANDBOX_FS + urls.FS_STAT, responses=_FILE_ERRORS)
    async def stat_path(sandbox_id: str, path: str) -> dict[str, object]:
        with files(sandbox_id) as fs:
            found = await ops.run_fs(sandbox_id, fs, SandboxFS.stat, path)
            return (await describing(sandbox_id, fs))(found)

    @app.get(urls.SANDBOX_FS + urls.FS_LIST, response_class=StreamingResponse,
             responses=stream_response("application/json", "the entries, streamed "
                                       "in batches: {entries, error?}") | _FILE_ERRORS)
    async def list_dir(sandbox_id: str, path: str) -> StreamingResponse:
        """The directory's entries, sorted by name, as ``{"entries": [...]}`` streamed in
        batches; an ``error`` member ends it if a batch fails (past its deadline)."""
        with files(sandbox_id) as fs:  # the listing holds its own directory descriptor
            body = await list_directory(ops, sandbox_id, fs, path,
                                        await describing(sandbox_id, fs))
        return StreamingResponse(body, media_type="application/json")

    @app.post(urls.SANDBOX_FS + urls.FS_MKDIR, responses=_FILE_ERRORS)
    async def make_dir(sandbox_id: str, req: MakeDirRequest) -> dict[str, object]:
        with files(sandbox_id) as fs:
            await ops.run_fs(sandbox_id, fs, SandboxFS.mkdir, req.path, req.parents)
            return asdict(await ops.run_fs(sandbox_id, fs, SandboxFS.stat, req.path))

    @app.post(urls.SANDBOX_FS + urls.FS_REMOVE, responses=_FILE_ERRORS)
    async def remove(sandbox_id: str, req: RemoveRequest) -> dict[str, str]:
        with files(sandbox_id) as fs:
            await ops.run_fs(sandbox_id, fs, SandboxFS.remove, req.path, req.recursive,
                          deadline_after(ops.timeout), doing=f"removing {req.path!r}")
        return {"removed": req.path}

    @app.get(urls.SANDBOX_FS + urls.FS_WATCH, response_class=StreamingResponse,
             responses=stream_response(NDJSON, "NDJSON: file events") | _FILE_ERRORS)
    async def watch(sandbox_id: str, path: str, recursive: bool = False,
                    timeout: Annotated[float | None, Query(gt=0, le=86400)] = None
                    ) -> StreamingResponse:
        """File events under ``path`` as NDJSON ``{"type", "path"}`` lines, until
        ``timeout`` (or the sandbox ends, or the client goes away)."""
        live = manager.live.get(sandbox_id)
        if manager.get(sandbox_id).state != "running" or live is None:
            raise Conflict(f"Sandbox {sandbox_id} has already finished")
        with SandboxFS(f"/proc/{live.pid}/root", live.workdir, live.owner) as fs:
            # a recursive watch lists every directory: a thread's work (the watch keeps a
            # root descriptor of its own)
            watcher = await ops.run_fs(sandbox_id, fs, Watch.start, path, recursive,
                                       deadline_after(ops.timeout), doing=f"watching {path!r}")

        async def events() -> AsyncIterator[bytes]:
            deadline = math.inf if timeout is None else trio.current_time() + timeout
            try:
                while not live.done.is_set() and trio.current_time() < deadline:
                    with trio.move_on_at(min(deadline, trio.current_time() + 1.0)) as wait:
                        await trio.lowlevel.wait_readable(watcher.fd)
                    if wait.cancelled_caught:
                        continue
                    # not abandoned at the deadline (it uses the watch's descriptors,
                    # closed below): it never waits, and checks its deadline as it scans
                    batch = await ops.run(sandbox_id, watcher.read_events,
                                          deadline_after(ops.timeout),
                                          doing=f"watching {path!r}", abandon=False)
                    for kind, changed in batch:
                        yield json.dumps({"type": kind, "path": changed}).encode() + b"\n"
            finally:
                watcher.close()

        return StreamingResponse(events(), media_type=NDJSON)

    @app.get(urls.SANDBOX_FS + urls.FS_FILE, response_class=StreamingResponse,
             responses=stream_response(BYTES, "the file's bytes") | _FILE_ERRORS)
    async def read_file(sandbox_id: str, path: str,
                        offset: Annotated[int, Query(ge=0, le=MAX_FILE_OFFSET)] = 0,
                        length: Annotated[int | None, Query(ge=0)] = None
                        ) -> StreamingResponse:
        """The file's bytes from ``offset`` (``length`` of them, or to the end)."""
        with files(sandbox_id) as fs:
            fd = await ops.run_fs(sandbox_id, fs, SandboxFS.open_regular, path, os.O_RDONLY)

        return StreamingResponse(stream_fd(ops, sandbox_id, fd, offset, length),
                                 media_type=BYTES)

    @app.put(urls.SANDBOX_FS + urls.FS_FILE, responses=_FILE_ERRORS)
    async def write_file(sandbox_id: str, path: str, request: Request,
                         mode: WriteMode = "w",
                         offset: Annotated[int, Query(ge=0, le=MAX_FILE_OFFSET)] = 0,
                         parents: bool = False) -> dict[str, object]:
        """Write the body to the file (``w`` truncates, ``a`` appends, ``x`` creates only a
        new file, ``r+`` writes at ``offset`` into an existing one); ``parents``: make its
        missing parent directories first, as Modal's ``write_bytes`` does."""
        with files(sandbox_id) as fs:
            parent = posixpath.dirname(fs.path(path).rstrip("/"))
            if parents and parent not in ("", "/"):
                await ops.run_fs(sandbox_id, fs, SandboxFS.mkdir, parent, True)
            fd = await ops.run_fs(sandbox_id, fs, SandboxFS.open_regular, path, _FLAGS[mode], 0o644)
            try:
                if mode == "r+" and offset:
                    os.lseek(fd, offset, os.SEEK_SET)
                await write_stream(ops, sandbox_id, fd, request.stream())
                name = os.path.basename(fs.path(path).rstrip("/"))
                return asdict(entry(name, os.fstat(fd)))  # the file written, not a new lookup
            except OSError as exc:
                raise FileError(exc, path) from exc
            finally:
                os.close(fd)


