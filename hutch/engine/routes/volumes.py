"""The volume routes: lookup, list, delete, and the files calls (list, read, write, remove,
copy), run like a sandbox's (:mod:`hutch.engine.files.fileops`): in the volume's own worker
threads, each step with a deadline, listings streamed in batches.

What a call makes belongs to the volume's ids (:mod:`hutch.engine.storage.volumeids`),
which cannot change while it runs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import asdict
from typing import Annotated, Any

import trio
from fastapi import FastAPI, Query, Request
from fastapi.responses import StreamingResponse

from hutch.api import urls
from hutch.api.models import (
    CopyFilesRequest,
    LookupVolumeRequest,
    RemoveRequest,
    RenameVolumeRequest,
    error_responses,
    stream_response,
)
from hutch.engine.files.fileops import FileOps, deadline_after
from hutch.engine.files.filestreams import (
    copy_files,
    entry_row,
    list_directory,
    stream_fd,
    walk_directory,
    write_stream,
)
from hutch.engine.files.sandboxfs import Entry, FileError, SandboxFS, entry
from hutch.engine.storage.volumes import VolumeService, ops_owner

BYTES = "application/octet-stream"
#: A volume file route's answers besides 200: a file operation's typed errors (400, 403,
#: 404, 409), no such volume (404), a malformed request (422).
_FILE_ERRORS = error_responses(400, 403, 404, 409, 422)


def add_volume_routes(app: FastAPI, volumes: VolumeService, ops: FileOps | None = None
                      ) -> None:
    ops = ops or volumes.ops

    def files(name: str) -> SandboxFS:
        record = volumes.lookup(name, create=False)
        return SandboxFS(str(volumes.directory(record)), owner=volumes.ids.owner(record))

    @contextlib.contextmanager
    def writable(name: str) -> Iterator[SandboxFS]:
        """The volume's files, for a call that makes files: what it makes belongs to the
        volume's ids, which cannot change meanwhile (:meth:`VolumeIds.writing`)."""
        record = volumes.lookup(name, create=False)
        with volumes.ids.writing(record) as owner_id, \
                SandboxFS(str(volumes.directory(record)), owner=owner_id) as fs:
            yield fs

    owner = ops_owner

    @app.post(urls.VOLUMES_LOOKUP, responses=error_responses(400, 404, 422))
    async def lookup(req: LookupVolumeRequest) -> dict[str, Any]:
        return volumes.lookup(req.name, req.create_if_missing, req.must_create)

    @app.post(urls.VOLUME_RENAME, responses=error_responses(404, 409, 422))
    async def rename(name: str, req: RenameVolumeRequest) -> dict[str, Any]:
        await volumes.rename(name, req.new_name)
        return volumes.store.volume(req.new_name, create=False)

    @app.get(urls.VOLUMES)
    async def list_volumes() -> dict[str, Any]:
        return {"volumes": volumes.store.volumes()}

    @app.delete(urls.VOLUME, responses=error_responses(404, 409, 422))
    async def delete(name: str) -> dict[str, str]:
        path = await volumes.delete(name)
        # one worker thread of the volume's own (removing a big tree takes a while); the
        # record is gone, so its files go too, even if the caller gives up (and what a
        # killed engine left, the next one removes)
        with trio.CancelScope(shield=True):
            await ops.run(owner(name), volumes.remove_files, path,
                          doing=f"deleting volume {name!r}")
        return {"deleted": name}

    @app.get(urls.VOLUME + urls.FS_LIST, response_class=StreamingResponse,
             responses=stream_response("application/json", "the entries, streamed "
                                       "in batches: {entries, error?}") | _FILE_ERRORS)
    async def listdir(name: str, path: str = "/", recursive: bool = False
                      ) -> StreamingResponse:
        """Entries with their ``path``, sorted, as ``{"entries": [...]}`` streamed in
        batches (``error`` ends it if a batch fails)."""
        fs = files(name)
        try:
            if recursive:
                body = await walk_directory(ops, owner(name), fs, path, _path_row)
            else:
                body = await list_directory(ops, owner(name), fs, path,
                                            lambda e: _path_row(_join(path, e.name), e))
        finally:
            fs.close()  # the listing holds its own directory descriptor
        return StreamingResponse(body, media_type="application/json")

    @app.get(urls.VOLUME + urls.FS_FILE, response_class=StreamingResponse,
             responses=stream_response(BYTES, "the file's bytes") | _FILE_ERRORS)
    async def read(name: str, path: str) -> StreamingResponse:
        with files(name) as fs:
            fd = await ops.run_fs(owner(name), fs, SandboxFS.open_regular, path, os.O_RDONLY)

        return StreamingResponse(stream_fd(ops, owner(name), fd), media_type=BYTES)

    @app.put(urls.VOLUME + urls.FS_FILE, responses=_FILE_ERRORS)
    async def write(name: str, path: str, request: Request,
                    mode: Annotated[int, Query(ge=0, le=0o7777)] = 0o644) -> dict[str, Any]:
        """Write a file (its parent directories are created), streamed from the body."""
        with writable(name) as fs:
            parent = fs.path(path).rsplit("/", 1)[0]
            if parent:
                await ops.run_fs(owner(name), fs, SandboxFS.mkdir, parent, True)
            fd = await ops.run_fs(owner(name), fs, SandboxFS.open_regular, path,
                               os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            try:
                os.fchmod(fd, mode)
                await write_stream(ops, owner(name), fd, request.stream())
                return asdict(entry(os.path.basename(path.rstrip("/")), os.fstat(fd)))
            except OSError as exc:
                raise FileError(exc, path) from exc
            finally:
                os.close(fd)

    @app.post(urls.VOLUME + urls.FS_REMOVE, responses=_FILE_ERRORS)
    async def remove(name: str, req: RemoveRequest) -> dict[str, str]:
        with files(name) as fs:
            await ops.run_fs(owner(name), fs, SandboxFS.remove, req.path, req.recursive,
                          deadline_after(ops.timeout), doing=f"removing {req.path!r}")
        return {"removed": req.path}

    @app.post(urls.VOLUME + urls.FS_COPY, responses=_FILE_ERRORS)
    async def copy(name: str, req: CopyFilesRequest) -> dict[str, str]:
        """Copy files within the volume (into ``dst_path`` when it is a directory)."""
        with writable(name) as fs:
            await copy_files(ops, owner(name), fs, req.src_paths, req.dst_path)
        return {"copied": req.dst_path}


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def _path_row(path: str, e: Entry) -> dict[str, Any]:
    return {**entry_row(e), "path": path}
