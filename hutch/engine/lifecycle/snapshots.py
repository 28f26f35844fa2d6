"""Snapshots of running sandboxes and images mounted into them: the engine's side of
``sb.snapshot_filesystem``, ``sb.snapshot_directory``, ``sb.mount_image`` and
``sb.unmount_image``.

A filesystem snapshot copies the sandbox's overlay upper directory (its changes over its
image: files, whiteouts, opaque directories) into a new layer while the sandbox is held
still (:mod:`hutch.engine.isolation.freezer`), lets it go, and makes the copy a layer over
the sandbox's image in the store (:mod:`hutch.engine.storage.snapshots`).  Volumes,
``/proc``, ``/dev`` and every other mount are not in the upper directory, so not in the
snapshot; nor are ``copy=False`` local files (lower layers of their own, added when a
sandbox starts, as Modal adds them).  A directory snapshot copies one directory of the
sandbox's root as the sandbox sees it (never across a mount below it).

Everything that touches files runs in a worker thread, each sandbox's calls one at a
time; the sandbox is let go by that thread on every way out, a timeout included (checked
between files and between 8 MiB pieces of one).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from hutch.engine.errors import Conflict, EngineError, Invalid, NotFound, TimedOut
from hutch.engine.isolation import freezer
from hutch.engine.kernel import mountns
from hutch.engine.lifecycle.livesandbox import LiveSandbox
from hutch.engine.lifecycle.manager import SandboxManager
from hutch.engine.storage import imagemounts, rootfs, snapshots
from hutch.engine.storage.diskslots import DiskSlots
from hutch.engine.storage.store import SandboxRow
from hutch.imagebuild import inroot, layercopy
from hutch.imagebuild.layout import LOCAL_LAYER, ImageNotFound

MIB = 1 << 20
_RESOLVE = inroot.RESOLVE_IN_ROOT | inroot.RESOLVE_NO_MAGICLINKS


class SnapshotFailed(EngineError):
    """The snapshot could not be taken (an ``engine`` error: the SDK raises
    ``SnapshotCreationError``)."""


class SnapshotService:
    def __init__(self, manager: SandboxManager) -> None:
        self.manager = manager
        self.locks: defaultdict[str, trio.Lock] = defaultdict(trio.Lock)

    def _live(self, sandbox_id: str) -> LiveSandbox:
        live = self.manager.live.get(sandbox_id)
        if live is None or live.terminating or live.ended or live.pidfd is None:
            row = self.manager.store.sandbox(sandbox_id)  # NotFound for unknown ids
            raise Conflict(f"Sandbox {sandbox_id} has already finished"
                           if row.state == "exited" else f"Sandbox {sandbox_id} is not running")
        return live

    # snapshots --------------------------------------------------------------------------
    async def snapshot_filesystem(self, sandbox_id: str, timeout: float) -> tuple[str, str]:
        """Snapshot the sandbox's file system; returns the image's ref and digest."""
        live = self._live(sandbox_id)
        row = self.manager.store.sandbox(sandbox_id)
        async with self._lock(sandbox_id):
            deadline = time.monotonic() + timeout
            ref = await trio.to_thread.run_sync(self._filesystem, live, row, deadline)
        return ref, self.manager.images.store.lookup(ref) or ""

    async def snapshot_directory(self, sandbox_id: str, path: str, timeout: float
                                 ) -> tuple[str, str]:
        """Snapshot one directory of the sandbox; returns the image's ref and digest."""
        live = self._live(sandbox_id)
        row = self.manager.store.sandbox(sandbox_id)
        normal = mountns.normalised(path)
        if mountns.forbidden(normal):
            raise Invalid(f"{normal} belongs to the kernel: it cannot be snapshotted")
        async with self._lock(sandbox_id):
            deadline = time.monotonic() + timeout
            ref = await trio.to_thread.run_sync(self._directory, live, row, normal, deadline)
        return ref, self.manager.images.store.lookup(ref) or ""

    def _budget(self, row: SandboxRow, deadline: float, fd: int) -> layercopy.Budget:
        """What a snapshot of the sandbox may hold: its disk limit (a sparse file counts
        at its full size), the free space of the store, the time asked for."""
        limit = None
        if row.spec.ephemeral_disk is not None:
            limit = row.spec.ephemeral_disk * MIB
        elif row.spec.disk_slot:
            with contextlib.suppress(OSError):
                limit = DiskSlots.size_mib(Path(row.spec.disk_slot)) * MIB
        return layercopy.Budget(inroot.Space(fd), limit=limit, deadline=deadline)

    def _base_ref(self, row: SandboxRow) -> str:
        """The sandbox's image, checked to still be the layers it runs on."""
        store = self.manager.images.store
        try:
            layers, _ = store.image_parts(row.image)
        except ImageNotFound as exc:
            raise Conflict(f"the image of sandbox {row.sandbox_id} ({row.image}) was removed "
                           "since it started; a snapshot needs it") from exc
        own = [d for d in row.spec.layers if not d.startswith(LOCAL_LAYER)]
        if [d for _, d in layers] != own:
            raise Conflict(f"the name {row.image} now names another image than sandbox "
                           f"{row.sandbox_id} runs; a snapshot needs the one it runs")
        return row.image

    def _copy(self, live: LiveSandbox, row: SandboxRow, src: int, deadline: float,
              *, overlay: bool) -> Path:
        """A copy of the tree ``src`` made while the sandbox is held still."""
        store = self.manager.images.store
        tree = snapshots.new_tree(store)
        try:
            budget = self._budget(row, deadline, os.open(store.tmp, os.O_RDONLY))
            try:
                cgroup = live.cgroup
                v2 = next(iter(cgroup.paths.values()), None) \
                    if cgroup is not None and cgroup.version == 2 else None
                with freezer.frozen(v2, live.pidns()):
                    layercopy.copy_tree(src, tree, ids=snapshots.id_map(live.ids),
                                        budget=budget, overlay=overlay)
            finally:
                os.close(budget.space.fd)
            if live.ended or live.terminating:
                raise Conflict(f"Sandbox {live.sandbox_id} ended during the snapshot")
        except layercopy.CopyTimedOut as exc:
            snapshots.discard(tree)
            raise TimedOut(str(exc)) from exc
        except (layercopy.CopyRefused, freezer.FreezeFailed) as exc:
            snapshots.discard(tree)
            raise SnapshotFailed(f"snapshot of sandbox {live.sandbox_id}: {exc}") from exc
        except OSError as exc:
            snapshots.discard(tree)
            raise SnapshotFailed(f"snapshot of sandbox {live.sandbox_id}: reading its files "
                                 f"failed: {exc}") from exc
        except BaseException:
            snapshots.discard(tree)
            raise
        return tree

    def _take(self, live: LiveSandbox, row: SandboxRow, src: int, deadline: float, *,
              overlay: bool, base: str | None, source: str) -> str:
        """Copy the tree ``src`` (closed here) and tag it as a snapshot over ``base``."""
        try:
            tree = self._copy(live, row, src, deadline, overlay=overlay)
        finally:
            os.close(src)
        store = self.manager.images.store
        layer = snapshots.commit_tree(store, tree)
        return snapshots.write_snapshot(store, sandbox_id=live.sandbox_id, base_ref=base,
                                        layer=layer, source=source)

    def _filesystem(self, live: LiveSandbox, row: SandboxRow, deadline: float) -> str:
        base = self._base_ref(row)
        src = os.open(live.dirs.upper, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self._take(live, row, src, deadline, overlay=True, base=base,
                          source=live.sandbox_id)

    def _directory(self, live: LiveSandbox, row: SandboxRow, path: str,
                   deadline: float) -> str:
        root = self._root(live)
        try:
            try:
                src = inroot.openat2(root, path.lstrip("/") or ".",
                                     os.O_RDONLY | os.O_DIRECTORY, _RESOLVE)
            except FileNotFoundError as exc:
                raise NotFound(f"{path}: no such directory in the sandbox") from exc
            except OSError as exc:
                raise Invalid(f"{path}: {exc.strerror}") from exc
            try:
                seen = mountns.seen_path(root, src)
            except (OSError, mountns.MountRefused) as exc:
                os.close(src)
                raise Invalid(f"{path}: {exc}") from exc
            if mountns.forbidden(seen):
                os.close(src)
                raise Invalid(f"{path} is {seen}, which belongs to the kernel: it cannot be "
                              "snapshotted")
        finally:
            os.close(root)
        return self._take(live, row, src, deadline, overlay=False, base=None,
                          source=f"{live.sandbox_id}:{path}")

    def _root(self, live: LiveSandbox) -> int:
        """A descriptor of the sandbox's ``/``: its mount namespace's root, never its
        init's (which may have ``chroot``-ed: :func:`mountns.namespace_root`)."""
        try:
            mntns_fd = os.open(f"/proc/{live.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise Conflict(f"Sandbox {live.sandbox_id} is not running: {exc}") from exc
        try:
            self._still_running(live)
            return mountns.namespace_root(mntns_fd)
        finally:
            os.close(mntns_fd)

    @contextlib.asynccontextmanager
    async def _lock(self, sandbox_id: str) -> AsyncIterator[None]:
        """One snapshot or mount change of a sandbox at a time; the lock is dropped once
        nobody holds or waits for it (one per sandbox ever snapshotted would stay)."""
        lock = self.locks[sandbox_id]
        try:
            async with lock:
                yield
        finally:
            stats = lock.statistics()
            if not stats.locked and not stats.tasks_waiting and \
                    self.locks.get(sandbox_id) is lock:
                del self.locks[sandbox_id]

    @staticmethod
    def _still_running(live: LiveSandbox) -> None:
        """After a descriptor of ``/proc/<pid>/...`` was opened: the pid was still the
        sandbox's init (its pidfd has not ended), so the descriptor is the sandbox's."""
        pidfd = live.pidfd
        if pidfd is None or live.ended:
            raise Conflict(f"Sandbox {live.sandbox_id} has already finished")
        try:
            signal.pidfd_send_signal(pidfd, 0)
        except ProcessLookupError as exc:
            raise Conflict(f"Sandbox {live.sandbox_id} has already finished") from exc

    # image mounts -------------------------------------------------------------------------
    async def mount_image(self, sandbox_id: str, path: str, ref: str) -> str:
        """Mount the image ``ref`` at ``path`` in the sandbox; returns where it resolved."""
        live = self._live(sandbox_id)
        try:
            normal = mountns.check_target(path)
        except mountns.MountRefused as exc:
            raise Invalid(str(exc)) from exc
        image = await self.manager.images.resolve(ref)
        async with self._lock(sandbox_id):
            return await trio.to_thread.run_sync(self._mount, live, normal, image.layer_dirs)

    def _mount(self, live: LiveSandbox, path: str, layers: list[Path]) -> str:
        dirs = live.dirs
        records = imagemounts.load(dirs)
        if path in records:
            raise Conflict(f"an image is already mounted at {path}; unmount it first")
        number = imagemounts.next_number(dirs, records)
        names = [layer.name for layer in layers]
        mirror = self.manager.ids.mirror
        if live.ids is not None and mirror is not None:
            # held for the sandbox (released when it ends, with its own layers)
            layers, _ = mirror.acquire(live.sandbox_id, layers)
        fds: list[int] = []
        try:
            try:
                for name in ("ns/mnt", "ns/user"):
                    fds.append(os.open(f"/proc/{live.pid}/{name}", os.O_RDONLY | os.O_CLOEXEC))
            except OSError as exc:
                raise Conflict(f"Sandbox {live.sandbox_id} is not running: {exc}") from exc
            self._still_running(live)
            mntns_fd, userns_fd = fds
            root = mountns.namespace_root(mntns_fd)  # (not its init's: it may chroot)
            fds.append(root)
            try:
                rootfs.make_dirs_inside(Path(f"/proc/self/fd/{root}"), path, live.owner)
            except OSError as exc:
                raise Invalid(f"cannot make {path} in the sandbox: {exc.strerror}") from exc
            mount_fd = imagemounts.prepare(
                dirs, number, layers, owner=live.owner,
                userns_fd=userns_fd if live.ids is not None else None)
            try:
                taken = {str(r.get("seen", "")) for r in records.values()}
                seen, mount_id = mountns.attach(mntns_fd, root, path, mount_fd, refuse=taken)
            except BaseException:
                imagemounts.discard(dirs, number)
                raise
            finally:
                os.close(mount_fd)
        except mountns.MountRefused as exc:
            raise Invalid(str(exc)) from exc
        finally:
            for fd in fds:
                os.close(fd)
        # (the layers: a restarted daemon holds their in-memory copies for the sandbox again)
        records[path] = {"number": number, "mount_id": mount_id, "seen": seen,
                         "layers": names}
        imagemounts.save(dirs, records)
        return seen

    async def unmount_image(self, sandbox_id: str, path: str) -> None:
        live = self._live(sandbox_id)
        normal = mountns.normalised(path)
        async with self._lock(sandbox_id):
            await trio.to_thread.run_sync(self._unmount, live, normal)

    def _unmount(self, live: LiveSandbox, path: str) -> None:
        dirs = live.dirs
        records = imagemounts.load(dirs)
        record = records.get(path)
        if record is None:
            raise Invalid(f"no image is mounted at {path} (give the path given to "
                          "mount_image)")
        mntns_fd = os.open(f"/proc/{live.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._still_running(live)
            root = mountns.namespace_root(mntns_fd)
        except BaseException:
            os.close(mntns_fd)
            raise
        try:
            mountns.detach(mntns_fd, root, str(record.get("seen", path)),
                           int(record["mount_id"]))
        except mountns.MountRefused as exc:
            raise Invalid(str(exc)) from exc
        finally:
            os.close(mntns_fd)
            os.close(root)
        del records[path]
        imagemounts.save(dirs, records)
        imagemounts.discard(dirs, int(record["number"]))
