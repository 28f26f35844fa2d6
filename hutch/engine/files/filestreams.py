"""File contents and directory listings as streams, a bounded step at a time.

Every step that touches a sandbox's (or a volume's) files runs in one of its owner's worker
threads with a deadline (:class:`~hutch.engine.files.fileops.FileOps`); the event loop only
passes chunks along.  Listings are streamed too: one JSON document,
``{"entries": [...]}``, written a batch of :data:`LIST_BATCH` entries at a time, each
batch stat'ed in a thread and encoded on the loop in a few milliseconds.  Listing 300,000
entries in one go on the loop (listdir, 300,000 stats, then one JSON encoding) held the
engine's health answer for 2.8 to 3.6 s.  An error after the document began (a batch past
its deadline) ends it with an ``"error"`` member, ``{"type", "message"}`` as an error
body, which the SDK raises.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

from hutch.engine.errors import EngineError, Invalid
from hutch.engine.files.fileops import FileOps, deadline_after
from hutch.engine.files.sandboxfs import Entry, FileError, SandboxFS

READ_CHUNK = 1 << 20
#: Entries stat'ed and encoded per step of a listing.
LIST_BATCH = 2000


async def stream_fd(ops: FileOps, owner: str, fd: int, offset: int = 0,
                    length: int | None = None, chunk: int = READ_CHUNK
                    ) -> AsyncIterator[bytes]:
    """The bytes of an open file from ``offset`` (``length`` of them, or to the end), a
    chunk per worker-thread step; closes ``fd`` when done."""
    try:
        position, left = offset, length
        while left is None or left > 0:
            size = chunk if left is None else min(chunk, left)
            data = await ops.run_fd(owner, os.pread, fd, size, position, doing="a file read")
            if not data:
                return
            position += len(data)
            if left is not None:
                left -= len(data)
            yield data
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


async def write_stream(ops: FileOps, owner: str, fd: int,
                       chunks: AsyncIterator[bytes]) -> None:
    """Write every chunk of ``chunks`` to ``fd`` as it arrives (a request body), each in a
    worker thread: a write may wait for the disk (dirty-page throttling)."""
    async for chunk in chunks:
        if chunk:
            await ops.run_fd(owner, _write_all, fd, chunk, doing="a file write")


def _document(rows: AsyncIterator[list[dict[str, Any]]]) -> AsyncIterator[bytes]:
    """``{"entries": [...]}`` from batches of rows, ending with an ``error`` member if
    a batch fails."""
    async def encode() -> AsyncIterator[bytes]:
        yield b'{"entries":['
        first = True
        try:
            async for batch in rows:
                if batch:
                    text = json.dumps(batch, separators=(",", ":"))[1:-1]
                    yield (text if first else "," + text).encode()
                    first = False
        except EngineError as exc:
            error = {"type": exc.type, "message": exc.message}
            yield b'],"error":' + json.dumps(error).encode() + b"}"
            return
        yield b"]}"
    return encode()


async def list_directory(ops: FileOps, owner: str, fs: SandboxFS, path: str,
                         row: Callable[[Entry], dict[str, Any]]) -> AsyncIterator[bytes]:
    """A directory's entries as a streamed JSON document, ``row`` making each one's
    object.  Opening and reading the names happen before the first byte, so a missing
    or unreadable directory is answered with its own error status."""
    dirfd, names = await ops.run_fs(owner, fs, SandboxFS.names, path, deadline_after(ops.timeout),
                                 doing=f"listing {path!r}")

    async def batches() -> AsyncIterator[list[dict[str, Any]]]:
        try:
            for start in range(0, len(names), LIST_BATCH):
                part = names[start:start + LIST_BATCH]
                found = await ops.run_fd(owner, SandboxFS.entries, dirfd, part,
                                      doing=f"listing {path!r}")
                yield [row(e) for e in found]
        finally:
            os.close(dirfd)

    return _document(batches())


async def walk_directory(ops: FileOps, owner: str, fs: SandboxFS, path: str,
                         row: Callable[[str, Entry], dict[str, Any]]
                         ) -> AsyncIterator[bytes]:
    """Everything under a directory, sorted by path, as a streamed JSON document (the
    walk is one worker-thread step, within its deadline; the encoding is batched)."""
    found = await ops.run_fs(owner, fs, SandboxFS.walk, path, deadline_after(ops.timeout),
                          doing=f"listing {path!r}")

    async def batches() -> AsyncIterator[list[dict[str, Any]]]:
        for start in range(0, len(found), LIST_BATCH):
            yield [row(p, e) for p, e in found[start:start + LIST_BATCH]]

    return _document(batches())


async def copy_files(ops: FileOps, owner: str, fs: SandboxFS, sources: list[str],
                     dest: str) -> None:
    """Copy regular files within one root (into ``dest`` when it is a directory or when
    there are several), a chunk per worker-thread step; every open is the non-blocking,
    type-checked one, so a FIFO or a leased file at either end is refused at once."""
    into_dir = len(sources) > 1 or dest.endswith("/")
    if not into_dir:
        try:
            into_dir = (await ops.run_fs(owner, fs, SandboxFS.stat, dest)).type == "directory"
        except FileError:
            pass
    for source in sources:
        if (await ops.run_fs(owner, fs, SandboxFS.stat, source)).type == "directory":
            raise Invalid(f"copy_files copies files; {source!r} is a directory")
        name = source.rstrip("/").rsplit("/", 1)[-1]
        target = f"{dest.rstrip('/')}/{name}" if into_dir else dest
        src = await ops.run_fs(owner, fs, SandboxFS.open_regular, source, os.O_RDONLY)
        try:
            mode = os.fstat(src).st_mode & 0o7777
            dst = await ops.run_fs(owner, fs, SandboxFS.open_regular, target,
                                os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            try:
                while data := await ops.run_fd(owner, os.read, src, READ_CHUNK,
                                            doing="a copy"):
                    await ops.run_fd(owner, _write_all, dst, data, doing="a copy")
            except OSError as exc:
                raise FileError(exc, target) from exc
            finally:
                os.close(dst)
        finally:
            os.close(src)


def entry_row(entry: Entry) -> dict[str, Any]:
    """An entry as a listing's JSON object (``dataclasses.asdict`` copies deeply: slow
    for 300,000 entries)."""
    return {"name": entry.name, "type": entry.type, "size": entry.size, "mode": entry.mode,
            "mtime": entry.mtime}
