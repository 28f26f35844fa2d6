"""Volumes: named directories that outlive sandboxes and engine restarts.

A volume is a row in the state database and a directory ``<data>/volumes/<id>/``.  A
sandbox mounts it (or a ``sub_path`` of it) with a bind mount, read-write or read-only, so
two sandboxes using one volume see each other's files at once; ``commit``/``reload`` have
nothing to do here.  Files are read and written by the engine through the same confined
resolution as a sandbox's (:class:`~hutch.engine.files.sandboxfs.SandboxFS` rooted at the
volume's directory).  A volume some running sandbox mounts cannot be deleted.

Code in a sandbox that mounts a volume can plant FIFOs, leases and huge directories in it,
so its file calls run in the volume's own worker threads (:attr:`VolumeService.ops`; the
routes: :mod:`hutch.engine.routes.volumes`).

A volume's files belong to an id slice of its own, and the sandboxes that mount it run
with that slice (:mod:`hutch.engine.storage.volumeids`); what the engine makes in it gets
its slice's root as owner.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hutch.api.models import (
    VolumeMount,
    error_responses,
)
from hutch.engine.errors import AlreadyExists, Conflict, NotFound
from hutch.engine.files.fileops import FileOps
from hutch.engine.files.sandboxfs import SandboxFS
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
                             lambda name: self.ops.busy(ops_owner(name)) > 0)
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

    def lookup(self, name: str, create: bool, must_create: bool = False) -> dict[str, Any]:
        """The volume's record; its directory is made where missing: in a volume slot of
        its own where the host has them (:mod:`hutch.engine.storage.diskslots`: its writes end
        with ENOSPC at the slot's size), else on the data directory's disk.
        ``must_create``: one that exists already is :class:`AlreadyExists`."""
        try:
            record = self.store.volume(name, create=False)
        except NotFound:
            if not create:
                raise
            record = None
        if record is not None and must_create:
            raise AlreadyExists(f"Volume {name!r} already exists")
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
                       if name in row.spec.volumes} | self.ids.users.get(name, set()))

    async def rename(self, name: str, new_name: str) -> None:
        """Give the volume ``name`` a new name, while no sandbox mounts it (running
        sandboxes name their volumes, and their ids are counted by name)."""
        async with self.ids.locked(sorted({name, new_name})):
            self.store.volume(name, create=False)  # NotFound first
            users = self.users(name)
            if users:
                raise Conflict(f"Volume {name!r} is in use by running sandboxes: "
                               f"{', '.join(users)}; terminate them first")
            self.store.rename_volume(name, new_name)

    async def delete(self, name: str) -> Path:
        """Forget the volume ``name`` (under its lock: no sandbox is moving it or about to
        mount it) and free its ids; its directory, for :meth:`remove_files`."""
        async with self.ids.locked([name]):
            record = self.store.volume(name, create=False)
            users = self.users(name)
            if users:
                raise Conflict(f"Volume {name!r} is in use by running sandboxes: "
                               f"{', '.join(users)}; terminate them first")
            ids = self.store.volume_ids_of(record["volume_id"])
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


def ops_owner(name: str) -> str:
    """Whose worker threads a volume's files calls run in (:class:`FileOps`)."""
    return f"volume {name}"
