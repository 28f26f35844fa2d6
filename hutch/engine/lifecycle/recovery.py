"""Recovery after a restart of the daemon: adopting the sandboxes a previous daemon left
running, reaping those that ended meanwhile, ending those of a namespace the engine lost,
and sweeping the directories of long-ended sandboxes.

A mixin of :class:`hutch.engine.lifecycle.manager.SandboxManager` (it works on the manager's state),
kept apart so that the lifecycle module stays readable; what it uses of the manager is the
``_Manager`` protocol below.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Protocol

import trio

from hutch.api import exitcodes
from hutch.engine.errors import NotFound
from hutch.engine.isolation.idslices import Slice
from hutch.engine.kernel import proctree
from hutch.engine.lifecycle.cleanup import PENDING
from hutch.engine.lifecycle.livesandbox import LiveSandbox
from hutch.engine.lifecycle.networks import NetworkRegistry
from hutch.engine.lifecycle.sandboxids import SandboxIds
from hutch.engine.runtime.base import OCIRuntime, RuntimeCommandError
from hutch.engine.storage import imagemounts, remains, rootfs
from hutch.engine.storage.diskslots import DiskSlots
from hutch.engine.storage.store import SandboxRow, Store
from hutch.engine.storage.volumes import VolumeService

log = logging.getLogger("hutch.sandbox")

#: The exit code of a sandbox that hit its timeout (as ``timeout(1)``).


class _Manager(Protocol):
    """What recovery uses of :class:`hutch.engine.lifecycle.manager.SandboxManager` (mypy checks
    that the manager has it)."""

    store: Store
    runtime: OCIRuntime
    ids: SandboxIds
    volumes: VolumeService
    disks: DiskSlots
    nursery: trio.Nursery
    sandboxes_dir: Path
    exits_dir: Path
    live: dict[str, LiveSandbox]
    networks: NetworkRegistry

    def dirs(self, sandbox_id: str) -> rootfs.SandboxDirs: ...
    def _supervise(self, row: SandboxRow, stdin: trio.lowlevel.FdStream | None = None
                   ) -> None: ...
    async def _serve_tunnels(self, live: LiveSandbox) -> None: ...
    async def terminate(self, sandbox_id: str, grace: float) -> SandboxRow: ...
    async def _exit_code(self, pid: int, wait: float = 5.0) -> int | None: ...
    async def _cleanup(self, sandbox_id: str, dirs: rootfs.SandboxDirs, *,
                       held: bool = True) -> None: ...
    def _unfinished_cleanups(self) -> list[SandboxRow]: ...
    async def _runtime_state(self: _Manager, sandbox_id: str) -> dict[str, object] | None: ...
    def _forget_stale_exit_records(self: _Manager) -> None: ...
    async def _sweep_ended(self: _Manager) -> None: ...


class SandboxRecovery:
    async def recover(self: _Manager) -> None:
        """Adopt the sandboxes a previous daemon left running; reap the ones that died,
        end the ones that run in a namespace that is no longer the engine's (its pause
        process died, :mod:`hutch.engine.storage.remains`): nothing could enter them; and
        finish the cleanup of those marked ended whose cleanup the crash cut short (their
        process records are removed last)."""
        self.store.orphan_execs()
        unfinished = self._unfinished_cleanups()  # (before the adopted ones can end)
        for row in self.store.list_sandboxes(pooled=True):
            dirs = self.dirs(row.sandbox_id)
            alive = (row.state == "running" and row.init_pid is not None
                     and proctree.running(row.init_pid))
            named = False
            if alive:
                state = await self._runtime_state(row.sandbox_id)
                alive = named = state is not None and state.get("pid") == row.init_pid
            lost = False
            if alive and row.init_pid is not None and not remains.in_engine_userns(row.init_pid):
                alive, lost = False, True
            # what may remain of one that is not adopted ends (records make sure of whom)
            if not alive:
                await remains.end(dirs.root, row.init_pid, runtime_names_init=named)
            if lost:
                log.warning("sandbox %s runs in a namespace the engine lost: ending it",
                            row.sandbox_id)
                self.store.mark_exited(row.sandbox_id, None, "lost", remains.LOST_DETAIL)
                await self._cleanup(row.sandbox_id, dirs)
                continue
            if alive:
                log.info("adopting running sandbox %s", row.sandbox_id)
                self.ids.hold(row.sandbox_id, row.spec)
                if row.spec.ids is not None:  # (its image mounts' copies too)
                    self.ids.hold_layers(row.sandbox_id, imagemounts.layer_names(dirs))
                self.volumes.ids.hold(row.sandbox_id, list(row.spec.volumes),
                                      Slice.from_record(row.spec.ids))
                if row.spec.disk_slot:
                    self.disks.hold(Path(row.spec.disk_slot), row.sandbox_id)
                self._supervise(row, _reopen_stdin(dirs))
                await self._serve_tunnels(self.live[row.sandbox_id])
                if row.pooled:  # its pool died with the old daemon
                    self.nursery.start_soon(self.terminate, row.sandbox_id, 0.0)
                continue
            code = await self._exit_code(row.init_pid, wait=0) if row.init_pid else None
            if remains.was_lost(dirs.root):  # ended by the pause process, as lost
                self.store.mark_exited(row.sandbox_id, None, "lost", remains.LOST_DETAIL)
            elif row.state == "creating":
                self.store.mark_exited(row.sandbox_id, None, "failed")
            elif time.time() >= row.deadline and code is None:
                self.store.mark_exited(row.sandbox_id, exitcodes.TIMED_OUT, "timeout")
            else:
                self.store.mark_exited(row.sandbox_id, code, "exited" if code is not None
                                       else "lost")
            await self._cleanup(row.sandbox_id, dirs)
            log.info("reaped sandbox %s that ended while no daemon ran", row.sandbox_id)
        for row in unfinished:  # its cleanup was cut short: without what it never held
            dirs = self.dirs(row.sandbox_id)
            try:
                await remains.end(dirs.root, row.init_pid, runtime_names_init=False)
                await self._cleanup(row.sandbox_id, dirs, held=False)
            except Exception:  # (the daemon starts all the same; the next one tries again)
                log.exception("finishing the cleanup of sandbox %s", row.sandbox_id)
            else:
                log.info("finished the cleanup of sandbox %s", row.sandbox_id)
        self._forget_stale_exit_records()
        await self.networks.recover(lambda sandbox_id: sandbox_id in self.live)
        try:  # what a crash left in them
            await trio.to_thread.run_sync(self.disks.empty_free)
        except Exception:
            log.exception("emptying the disk slots a previous daemon left")
        self.nursery.start_soon(self._sweep_ended)

    def _unfinished_cleanups(self: _Manager) -> list[SandboxRow]:
        """The ended sandboxes whose cleanup a crash cut short: their directory still has
        the mark of a pending cleanup, or (made by an engine without that mark) records of
        their processes."""
        found = []
        ids = {p.parent.name for pattern in (f"*/{PENDING}", f"*/{remains.RECORD}")
               for p in self.sandboxes_dir.glob(pattern)}
        for sandbox_id in sorted(ids):
            try:
                row = self.store.sandbox(sandbox_id)
            except NotFound:
                continue
            if row.state == "exited":
                found.append(row)
        return found

    async def _sweep_ended(self: _Manager) -> None:
        """Remove the directories and logs of sandboxes that ended more than
        ``HUTCH_LOG_RETENTION`` seconds ago (default ``rootfs.LOG_RETENTION``): now (for
        those a previous engine left), then every ``rootfs.SWEEP_INTERVAL`` seconds."""
        retention = float(os.environ.get("HUTCH_LOG_RETENTION", rootfs.LOG_RETENTION))
        interval = max(1.0, min(rootfs.SWEEP_INTERVAL, retention / 2))
        while True:
            try:
                # in the event loop: the store is not used from threads; what is removed is
                # small (logs of at most LOG_CAP_MIB; the rest went at the sandbox's end)
                removed = rootfs.sweep_ended(self.sandboxes_dir, self.store,
                                             retention=retention)
            except OSError as exc:
                log.warning("removing ended sandboxes' directories: %s", exc)
            else:
                if removed:
                    log.info("removed the directories of %d ended sandboxes", len(removed))
            await trio.sleep(interval)

    def _forget_stale_exit_records(self: _Manager) -> None:
        """Drop exit records no sandbox will read (e.g. of execs orphaned by a dead daemon)."""
        live_pids = {str(live.pid) for live in self.live.values()}
        for record in self.exits_dir.iterdir():
            if record.name not in live_pids:
                record.unlink(missing_ok=True)

    async def _runtime_state(self: _Manager, sandbox_id: str) -> dict[str, object] | None:
        try:
            return await self.runtime.state(sandbox_id)
        except RuntimeCommandError:
            return None


def _reopen_stdin(dirs: rootfs.SandboxDirs) -> trio.lowlevel.FdStream | None:
    """The write end of an adopted sandbox's stdin, unless its client already closed it.

    An entrypoint that read stdin while no daemon held it open saw EOF; one that reads
    later finds the pipe open again.
    """
    try:
        fd = os.open(dirs.stdin_fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    return trio.lowlevel.FdStream(fd)
