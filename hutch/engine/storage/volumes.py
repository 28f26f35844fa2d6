"""Volumes: named directories that outlive sandboxes and engine restarts.

A volume is a row in the state database and a directory ``<data>/volumes/<id>/``.  A
sandbox mounts it (or a ``sub_path`` of it) with a bind mount, read-write or read-only, so
two sandboxes using one volume see each other's files at once; ``commit``/``reload`` have
nothing to do here.  Files are read and written by the engine through the same confined
resolution as a sandbox's (:class:`~hutch.engine.files.sandboxfs.SandboxFS` rooted at the
volume's directory).  A volume some running sandbox mounts cannot be deleted.

Code in a sandbox that mounts a volume can plant FIFOs, leases and huge directories in it,
so its file calls are run like a sandbox's (:mod:`hutch.engine.files.fileops`): in the volume's
own worker threads, each step with a deadline, listings streamed in batches.

A volume's files belong to an id slice of its own, and the sandboxes that mount it run
with that slice (:mod:`hutch.engine.storage.volumeids`); what the engine makes in it gets its
slice's root as owner.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import trio
from fastapi import FastAPI, Query, Request
from fastapi.responses import StreamingResponse

from hutch.api.models import (
    CopyFilesRequest,
    LookupVolumeRequest,
    RemoveRequest,
    VolumeMount,
    error_responses,
    stream_response,
)
from hutch.engine.errors import Conflict, NotFound
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
from hutch.engine.isolation.idslices import SliceAllocator
from hutch.engine.kernel import linux, trees
from hutch.engine.runtime import ociconfig
from hutch.engine.storage.diskslots import DiskSlots
from hutch.engine.storage.store import Store
from hutch.engine.storage.volumeids import VolumeIds

log = logging.getLogger("hutch.volumes")

BYTES = "application/octet-stream"
#: A volume file route's answers besides 200: a file operation's typed errors (400, 403,
#: 404, 409), no such volume (404), a malformed request (422).
_FILE_ERRORS = error_responses(400, 403, 404, 409, 422)


class VolumeService:
    def __init__(self, store: Store, data_dir: Path, slots: DiskSlots | None = None,
                 slices: SliceAllocator | None = None) -> None:
        """``slices``: the engine's id slices, where sandboxes get ids of their own."""
        self.store = store
        self.root = data_dir / "volumes"
        self.root.mkdir(exist_ok=True)
        #: the worker threads of the volumes' files calls
        self.ops = FileOps()
        self.ids = VolumeIds(store, slices,
                             lambda name: self.directory(self.lookup(name, create=False)),
                             lambda name: self.ops.busy(_ops_owner(name)) > 0)
        self.slots = slots if slots is not None and slots.enabled else None
        known = {str(record["volume_id"]) for record in store.volumes()}
        for leftover in self.root.iterdir():  # a volume deleted as the engine was killed
            if leftover.name not in known:
                log.info("removing the files of deleted volume %s", leftover.name)
                if leftover.is_symlink():
                    leftover.unlink()  # (its slot is emptied below)
                else:
                    trees.remove_tree(leftover)
        if self.slots is not None:
            for link in self.root.iterdir():  # the volumes that have theirs
                if link.is_symlink():
                    self.slots.hold(Path(os.readlink(link)).parent, link.name)
            try:
                self.slots.empty_free()  # a volume deleted while the engine crashed
            except Exception:
                log.exception("emptying the volume slots a previous daemon left")

    def lookup(self, name: str, create: bool) -> dict[str, Any]:
        """The volume's record; its directory is made where missing: in a volume slot of
        its own where the host has them (:mod:`hutch.engine.storage.diskslots`: its writes end
        with ENOSPC at the slot's size), else on the data directory's disk."""
        try:
            record = self.store.volume(name, create=False)
        except NotFound:
            if not create:
                raise
            record = None
        if record is not None:
            path = self.directory(record)
            if path.is_symlink() or path.is_dir():
                return record
        if self.slots is None:
            record = record or self.store.volume(name, create=True)
            self.directory(record).mkdir(mode=0o755, exist_ok=True)
            return record
        # the slot first: a volume refused for want of one leaves no record behind
        slot = self.slots.take(f"volume:{name}")
        assert slot is not None
        try:
            record = record or self.store.volume(name, create=True)
            (slot / "data").mkdir(mode=0o755, exist_ok=True)
            self.directory(record).symlink_to(slot / "data")
        except BaseException:
            self.slots.give_back(slot)
            raise
        return record

    def directory(self, record: dict[str, Any]) -> Path:
        return self.root / str(record["volume_id"])

    def users(self, name: str) -> list[str]:
        """Running sandboxes that mount the volume ``name`` (and creates about to)."""
        return sorted({row.sandbox_id for row in self.store.list_sandboxes(pooled=True)
                       if name in row.spec.get("volumes", [])} | self.ids.users.get(name, set()))

    async def delete(self, name: str) -> Path:
        """Forget the volume ``name`` (under its lock: no sandbox is moving it or about to
        mount it) and free its ids; its directory, for :meth:`remove_files`."""
        async with self.ids.locked([name]):
            record = self.store.volume(name, create=False)
            users = self.users(name)
            if users:
                raise Conflict(f"Volume {name!r} is in use by running sandboxes: "
                               f"{', '.join(users)}; terminate them first")
            ids = self.store.volume_ids().get(record["volume_id"])
            self.store.delete_volume(name)
            if ids is not None:
                self.ids.forget(ids)
            return self.directory(record)

    def remove_files(self, path: Path) -> None:
        """Remove a deleted volume's files (blocking: a big tree takes a while)."""
        if path.is_symlink():  # in a slot: emptied, and free for the next volume
            slot = Path(os.readlink(path)).parent
            path.unlink()
            if self.slots is not None:
                self.slots.give_back(slot)
            return
        trees.remove_tree(path)

    def mounts(self, volumes: dict[str, VolumeMount], staging: Path, *,
               stage_all: bool = False) -> list[ociconfig.Mount]:
        """The bind mounts of a sandbox's volumes.

        A ``sub_path`` is created if missing, resolved inside the volume by the kernel and
        opened, and that open directory is bind-mounted by the engine onto a staging
        directory of the sandbox (``staging/<n>``) that only the engine can reach; the
        runtime mounts the staging directory.  So a sandbox swapping a symlink into the
        volume meanwhile cannot redirect the mount.  :func:`release_staging` undoes it.
        ``stage_all``: every volume is staged so (a sandbox with ids of its own: its
        runtime reaches the volume there, not through the data directory).
        """
        mounts = []
        for number, (path, volume) in enumerate(sorted(volumes.items())):
            record = self.lookup(volume.name, create=False)
            source = str(self.directory(record))
            if volume.sub_path or stage_all:
                with SandboxFS(source, owner=self.ids.owner(record)) as fs:
                    if volume.sub_path:
                        fs.mkdir(volume.sub_path, parents=True)
                    fd = fs.open(volume.sub_path or "/", os.O_PATH | os.O_DIRECTORY)
                try:
                    staging.mkdir(exist_ok=True)
                    staging.chmod(0o711)  # (a sandbox's own root passes through it)
                    target = staging / str(number)
                    target.mkdir(exist_ok=True)
                    linux.mount(f"/proc/self/fd/{fd}", str(target), None,
                                linux.MS_BIND | linux.MS_REC)
                    # as the sandbox will have it, also where the engine's namespace shows
                    # it (nosuid, nodev; read-only for a read-only mount)
                    linux.restrict_mount(str(target), linux.MOUNT_ATTR_NOSUID
                                         | linux.MOUNT_ATTR_NODEV | (linux.MOUNT_ATTR_RDONLY
                                                                     if volume.read_only else 0))
                finally:
                    os.close(fd)
                source = str(target)
            options = ["rbind", "ro" if volume.read_only else "rw", "nosuid", "nodev"]
            mounts.append(ociconfig.Mount(destination=path, type="bind", source=source,
                                          options=options))
        return mounts


def release_staging(staging: Path) -> None:
    """Unmount a sandbox's staged volume directories (never deleting through them)."""
    if not staging.is_dir():
        return
    for target in staging.iterdir():
        try:
            linux.umount(str(target), linux.MNT_DETACH)
        except OSError:
            pass
        try:
            target.rmdir()
        except OSError:
            pass
    try:
        staging.rmdir()
    except OSError:
        pass


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

    owner = _ops_owner

    @app.post("/v1/volumes/lookup", responses=error_responses(400, 404, 422))
    async def lookup(req: LookupVolumeRequest) -> dict[str, Any]:
        return volumes.lookup(req.name, req.create_if_missing)

    @app.get("/v1/volumes")
    async def list_volumes() -> dict[str, Any]:
        return {"volumes": volumes.store.volumes()}

    @app.delete("/v1/volumes/{name}", responses=error_responses(404, 409, 422))
    async def delete(name: str) -> dict[str, str]:
        path = await volumes.delete(name)
        # one worker thread of the volume's own (removing a big tree takes a while); the
        # record is gone, so its files go too, even if the caller gives up (and what a
        # killed engine left, the next one removes)
        with trio.CancelScope(shield=True):
            await ops.run(owner(name), volumes.remove_files, path,
                          doing=f"deleting volume {name!r}")
        return {"deleted": name}

    @app.get("/v1/volumes/{name}/list", response_class=StreamingResponse,
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

    @app.get("/v1/volumes/{name}/file", response_class=StreamingResponse,
             responses=stream_response(BYTES, "the file's bytes") | _FILE_ERRORS)
    async def read(name: str, path: str) -> StreamingResponse:
        with files(name) as fs:
            fd = await ops.run_fs(owner(name), fs, SandboxFS.open_regular, path, os.O_RDONLY)

        return StreamingResponse(stream_fd(ops, owner(name), fd), media_type=BYTES)

    @app.put("/v1/volumes/{name}/file", responses=_FILE_ERRORS)
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

    @app.post("/v1/volumes/{name}/remove", responses=_FILE_ERRORS)
    async def remove(name: str, req: RemoveRequest) -> dict[str, str]:
        with files(name) as fs:
            await ops.run_fs(owner(name), fs, SandboxFS.remove, req.path, req.recursive,
                          deadline_after(ops.timeout), doing=f"removing {req.path!r}")
        return {"removed": req.path}

    @app.post("/v1/volumes/{name}/copy", responses=_FILE_ERRORS)
    async def copy(name: str, req: CopyFilesRequest) -> dict[str, str]:
        """Copy files within the volume (into ``dst_path`` when it is a directory)."""
        with writable(name) as fs:
            await copy_files(ops, owner(name), fs, req.src_paths, req.dst_path)
        return {"copied": req.dst_path}


def _ops_owner(name: str) -> str:
    """Whose worker threads a volume's files calls run in (:class:`FileOps`)."""
    return f"volume {name}"


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def _path_row(path: str, e: Entry) -> dict[str, Any]:
    return {**entry_row(e), "path": path}
