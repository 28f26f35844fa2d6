"""What is left of a sandbox whose engine namespace ended: finding it, and ending it.

Why: if the pause process dies, the next one makes a sibling user namespace from which
nothing can join the old sandboxes' namespaces (``setns`` needs CAP_SYS_ADMIN over them),
so such a sandbox can no longer be used and the new daemon ends it (:func:`in_engine_userns`
tells the two cases apart).  Ending it needs no capability: its processes run under the
user's own host uid.  A pid is only a name, so each process is pinned by a pidfd and checked
through it before it is signalled (the start time :func:`record` kept; slirp4netns by the
sandbox's API socket on its command line).
Details: docs/design.md, "Processes" ("Pause process restarts").
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import trio

from hutch.engine.kernel import proctree
from hutch.engine.network import outbound
from hutch.engine.network.outbound import PID_FILE

log = logging.getLogger("hutch.remains")

#: The record of a sandbox's processes in its directory: lines of "kind pid start-time".
RECORD = "processes"
#: ``NS_GET_PARENT`` (``_IO(0xb7, 0x2)``): a namespace's parent, EPERM above our own.
NS_GET_PARENT = 0xB702
#: The file :func:`end_all_lost` leaves in the directory of a sandbox whose init it ended.
LOST_MARK = "lost"
#: Seconds the killed remains of one sandbox have to exit.
EXIT_DEADLINE = 5.0
#: Why a sandbox of a namespace that ended is recorded as lost (its ``exit_detail``).
LOST_DETAIL = ("the engine's namespace ended (its pause process was killed): nothing could "
               "enter the sandbox any more, so the new engine stopped it")


def was_lost(sandbox_dir: Path) -> bool:
    """Whether :func:`end_all_lost` ended this sandbox's init (its namespace had ended)."""
    return (sandbox_dir / LOST_MARK).exists()


def record(sandbox_dir: Path, kind: str, pid: int, pidfd: int | None) -> None:
    """Remember process ``pid`` of the sandbox (``kind``: init or zygote) by its start
    time, read while ``pidfd`` proves it is still that process."""
    started = proctree.start_time(pid)
    try:
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, 0)
    except ProcessLookupError:
        return  # it has already ended: nothing of it can remain
    if started is not None:
        with open(sandbox_dir / RECORD, "a") as f:
            f.write(f"{kind} {pid} {started}\n")


def recorded(sandbox_dir: Path) -> list[tuple[str, int, int]]:
    """The processes :func:`record` noted for the sandbox: (kind, pid, start time)."""
    try:
        lines = (sandbox_dir / RECORD).read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        with contextlib.suppress(ValueError):
            kind, pid, started = line.split()
            found.append((kind, int(pid), int(started)))
    return found


def in_engine_userns(pid: int) -> bool | None:
    """Whether ``pid`` lives in this process's user namespace or one below it (None when
    it is gone).  A namespace outside ours is one this process cannot even inspect
    (opening ``/proc/PID/ns/user`` is refused), or whose ancestors it cannot see."""
    own = os.stat("/proc/self/ns/user")
    try:
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        return None
    except PermissionError:
        return False
    try:
        while True:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
                return True
            try:
                parent = fcntl.ioctl(fd, NS_GET_PARENT)
            except OSError:
                return False  # EPERM: its parent is not ours to see; the initial one's none
            os.close(fd)
            fd = parent
    finally:
        os.close(fd)


def _pidns_init(pid: int) -> bool:
    """Whether ``pid`` is pid 1 of a pid namespace below the host's (a container's init)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    ids = line.split()[1:]
                    return len(ids) > 1 and ids[-1] == "1"
    except OSError:
        pass
    return False


def _started_at(ticks: int) -> Callable[[int], bool]:
    return lambda pid: proctree.start_time(pid) == ticks


def _kill(sandbox_dir: Path, init_pid: int | None, runtime_names_init: bool,
          pinned: list[tuple[str, int, int]]) -> None:
    """SIGKILL the sandbox's recorded processes, each pinned by a pidfd (kept in
    ``pinned``) after its check."""
    records = recorded(sandbox_dir)
    checks: list[tuple[str, int, Callable[[int], bool]]] = [
        (kind, pid, _started_at(started)) for kind, pid, started in records]
    if init_pid is not None and runtime_names_init \
            and not any(kind == "init" for kind, _, _ in records):
        checks.append(("init", init_pid, _pidns_init))
    try:
        slirp = int((sandbox_dir / PID_FILE).read_text())
    except (OSError, ValueError):
        pass
    else:
        checks.append(("slirp4netns", slirp, outbound.slirp_of(sandbox_dir)))
    for kind, pid, belongs in checks:
        pidfd = proctree.pin_if(pid, belongs)
        if pidfd is None:
            continue
        pinned.append((kind, pid, pidfd))
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except PermissionError:
            log.warning("%s %d of %s runs as another user: it cannot be stopped from "
                        "here", kind, pid, sandbox_dir.name)


def end_all_lost(sandboxes_dir: Path, deadline: float = EXIT_DEADLINE) -> int:
    """SIGKILL every recorded process of every sandbox in ``sandboxes_dir`` and wait (up
    to ``deadline`` seconds) for them to exit; how many there were.

    Run by a new pause process (``python -m hutch.engine.storage.remains DIR``) before it makes
    its namespaces: the old ones are gone, so whatever the records still name is left of
    sandboxes nothing can enter.  From the host's namespace this works for sandboxes with
    user ids of their own too (the user owns the old engine namespace, so holds every
    capability in it and below), which a daemon in the new namespace could not signal."""
    pinned: list[tuple[str, int, int]] = []
    try:
        for record_file in sorted(sandboxes_dir.glob(f"*/{RECORD}")):
            before = len(pinned)
            _kill(record_file.parent, None, False, pinned)
            if any(kind == "init" for kind, _, _ in pinned[before:]):
                (record_file.parent / LOST_MARK).touch()
        poller = select.poll()
        for _, _, pidfd in pinned:
            poller.register(pidfd, select.POLLIN)
        left = {pidfd for _, _, pidfd in pinned}
        end = time.monotonic() + deadline
        while left and time.monotonic() < end:
            for fd, _ in poller.poll(max(1, int((end - time.monotonic()) * 1000))):
                left.discard(fd)
                poller.unregister(fd)
        return len(pinned)
    finally:
        for _, _, pidfd in pinned:
            os.close(pidfd)


async def end(sandbox_dir: Path, init_pid: int | None, *, runtime_names_init: bool) -> None:
    """SIGKILL what remains of the sandbox in ``sandbox_dir`` (its init and so its whole
    pid namespace, its zygotes, its slirp4netns) and wait until it has exited.

    ``runtime_names_init``: the OCI runtime's state names ``init_pid`` as the container's
    process, which identifies an init that has no record.  Processes that did not start
    when recorded, or are not the sandbox's, are left alone."""
    pinned: list[tuple[str, int, int]] = []
    try:
        _kill(sandbox_dir, init_pid, runtime_names_init, pinned)
        with trio.move_on_after(EXIT_DEADLINE):
            for _, _, pidfd in pinned:
                await trio.lowlevel.wait_readable(pidfd)
        for kind, pid, pidfd in pinned:
            if not proctree.exited(pidfd):
                log.warning("%s %d of %s did not exit within %.0f s of SIGKILL", kind, pid,
                            sandbox_dir.name, EXIT_DEADLINE)
            else:
                log.info("ended %s %d of lost sandbox %s", kind, pid, sandbox_dir.name)
    finally:
        for _, _, pidfd in pinned:
            os.close(pidfd)
    if any(kind == "slirp4netns" for kind, _, _ in pinned):
        # ended here, by pidfd: the pid file must not lead a later stop to a reused pid
        (sandbox_dir / PID_FILE).unlink(missing_ok=True)


def forget(sandbox_dir: Path) -> None:
    """Drop the sandbox's record (its processes have ended)."""
    (sandbox_dir / RECORD).unlink(missing_ok=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s remains %(message)s")
    ended = end_all_lost(Path(sys.argv[1]))
    if ended:
        log.info("ended %d processes of sandboxes whose engine namespace ended", ended)
