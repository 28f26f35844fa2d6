"""A sandbox's cleanup when it has ended: its processes, container, network, cgroup,
mounts, ids and disk slot.  A part of :class:`hutch.engine.lifecycle.manager.SandboxManager`
(it works on the manager's state), kept apart so that the lifecycle module stays readable.

``cleanup.pending`` in the sandbox's directory is made before its container and removed
when its cleanup is over (not when the unmount failed): a daemon killed in between leaves
it, and the next one finishes the cleanup (:mod:`hutch.engine.lifecycle.recovery`) without
giving back ids or a disk slot it never held (another sandbox may hold them by then).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import trio

from hutch.engine.isolation.cgroups import SandboxCgroup
from hutch.engine.lifecycle.execregistry import ExecRegistry
from hutch.engine.lifecycle.networks import NetworkRegistry
from hutch.engine.lifecycle.sandboxids import SandboxIds
from hutch.engine.network import outbound
from hutch.engine.runtime.base import OCIRuntime, RuntimeCommandError
from hutch.engine.storage import remains, rootfs
from hutch.engine.storage.diskslots import DiskSlots
from hutch.engine.storage.store import SandboxSpec, Store
from hutch.engine.storage.volumes import VolumeService, release_staging

log = logging.getLogger("hutch.sandbox")

PENDING = "cleanup.pending"


class _Manager(Protocol):
    store: Store
    runtime: OCIRuntime
    ids: SandboxIds
    volumes: VolumeService
    disks: DiskSlots
    execs: ExecRegistry
    networks: NetworkRegistry

    def _cgroup(self, sandbox_id: str, spec: SandboxSpec) -> SandboxCgroup | None: ...


class SandboxCleanup:
    async def _cleanup(self: _Manager, sandbox_id: str, dirs: rootfs.SandboxDirs, *,
                       held: bool = True) -> None:
        """Undo what the sandbox's start made; ``held``: this daemon holds its ids and disk
        slot (not so for a cleanup a crash cut short), which go back."""
        for session in self.execs.of_sandbox(sandbox_id):
            if not session.done.is_set():
                session.kill_tree()
        try:
            await self.runtime.delete(sandbox_id, force=True)
        except RuntimeCommandError as exc:
            if "does not exist" not in exc.stderr and "not found" not in exc.stderr.lower():
                log.warning("deleting container %s: %s", sandbox_id, exc)
        except OSError as exc:  # (out of descriptors): the cleanup goes on
            log.warning("deleting container %s: %s", sandbox_id, exc)
        await outbound.detach(dirs.root)
        await self.networks.leave(sandbox_id)
        row = self.store.sandbox(sandbox_id)
        cgroup = self._cgroup(sandbox_id, row.spec)
        if cgroup is not None:
            cgroup.remove()
        release_staging(dirs.root / "volumes")
        # What the sandbox left in its files is its own to shape (a tree 1500 levels deep,
        # hutch/engine/kernel/trees.py): nothing of it may end the daemon, which serves the
        # others.
        unmounted = True
        try:
            self.ids.unbind(dirs.root)
            rootfs.unmount_rootfs(dirs)
        except Exception:
            log.exception("cleaning up %s", sandbox_id)
            unmounted = False
        remains.forget(dirs.root)
        self.volumes.ids.leave(sandbox_id)
        if held:
            self.ids.give_back(sandbox_id, row.spec)
            if row.spec.disk_slot:
                try:
                    await trio.to_thread.run_sync(self.disks.give_back,
                                                  Path(row.spec.disk_slot))
                except Exception:
                    log.exception("emptying the disk slot of %s", sandbox_id)
        if unmounted:
            (dirs.root / PENDING).unlink(missing_ok=True)

    def _give_back_ids(self: _Manager, sandbox_id: str, spec: SandboxSpec) -> None:
        self.ids.give_back(sandbox_id, spec)
        self.volumes.ids.leave(sandbox_id)
