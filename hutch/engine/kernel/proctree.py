"""Killing a whole process tree inside a sandbox, grandchildren included.

Without a cgroup per exec (rootless hosts often have none), an exec's processes are found
two ways: the descendants of its first process, and any process in the sandbox's pid
namespace still carrying the exec's marker variable in its environment (a daemonised
grandchild re-parented to the sandbox's init keeps it).  Processes are stopped with SIGSTOP
until no new one appears, so none can fork away, then killed with SIGKILL.

A pid is only a name, and names are reused: an exec's pid may belong to an unrelated
process of the user by the time its sandbox is terminated.  So every signal goes through a
pidfd, and a pidfd is only used once the process it pins was seen inside the sandbox's pid
namespace (checked after the pidfd was opened, and confirmed by a signal 0 through it: a
process that was not yet reaped then still owned the pid the check read).
"""

from __future__ import annotations

import os
import select
import signal
from collections import defaultdict
from collections.abc import Callable


def _stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].split()


def _ppid(pid: int) -> int | None:
    fields = _stat(pid)
    return None if fields is None else int(fields[1])


def state(pid: int) -> bytes | None:
    """The state letter of ``pid`` (``R``, ``S``, ``D``, ``T``, ``t``, ``Z``...), or None."""
    fields = _stat(pid)
    return None if fields is None else fields[0]


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    return state(pid) not in (None, b"Z")


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _pidns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None


def members(pidns: int) -> list[int]:
    """The pids of the processes in the pid namespace ``pidns`` (its inode number)."""
    return [p for p in _pids() if _pidns(p) == pidns]


def _has_marker(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


def find_tree(root: int, marker: bytes | None = None, pidns: int | None = None) -> set[int]:
    """``root``, its descendants and the marked processes of the namespace ``pidns``
    (with ``pidns``, only processes in that namespace: nothing of the host)."""
    children: dict[int, list[int]] = defaultdict(list)
    pids = _pids() if pidns is None else members(pidns)
    for pid in pids:
        ppid = _ppid(pid)
        if ppid is not None:
            children[ppid].append(pid)
    found: set[int] = set()
    stack = []
    if root > 0 and os.path.exists(f"/proc/{root}") and (pidns is None or _pidns(root) == pidns):
        stack.append(root)
    if marker is not None and pidns is not None:
        stack += [p for p in pids if _has_marker(p, marker)]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, ()))
    return found


def _signal(pidfd: int, sig: int) -> bool:
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        return False
    return True


def pin_if(pid: int, belongs: Callable[[int], bool]) -> int | None:
    """A pidfd on ``pid`` if ``belongs(pid)``, checked while the pidfd held it: a signal 0
    through it afterwards proves the pid still named the process checked.  None when it
    does not belong or is gone; the caller closes the pidfd.  (A process that is alive but
    not ours to signal is pinned: the signal that follows reports it.)"""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        ok = belongs(pid)
        signal.pidfd_send_signal(pidfd, 0)
    except ProcessLookupError:
        ok = False
    except PermissionError:
        pass
    if not ok:
        os.close(pidfd)
        return None
    return pidfd


def pin(pid: int, pidns: int | None) -> int | None:
    """A pidfd for ``pid`` if it is (still) a live process of the namespace ``pidns`` (any,
    with None); None otherwise.  The caller closes it."""
    return pin_if(pid, lambda p: pidns is None or _pidns(p) == pidns)


def start_time(pid: int) -> int | None:
    """The start time of ``pid`` (clock ticks after boot: field 22 of its stat), or None;
    with the pid, it names one process for good."""
    fields = _stat(pid)
    return None if fields is None else int(fields[19])


def exited(pidfd: int | None) -> bool:
    """Whether the process of ``pidfd`` has exited (a pidfd polls readable then; none: it
    is gone).  ``poll``, not ``select``: the engine's descriptors go past 1023."""
    if pidfd is None:
        return True
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def kill_tree(root: int, marker: bytes | None = None, pidns: int | None = None,
              root_pidfd: int | None = None) -> set[int]:
    """Freeze then SIGKILL ``root``'s whole tree; returns the pids that were killed.

    ``root_pidfd``, a pidfd held since ``root`` started, names the root for certain (it is
    used even when the namespace check cannot be made); the caller keeps it open.
    """
    pinned: dict[int, int] = {}
    try:
        if root_pidfd is not None and _signal(root_pidfd, 0):
            pinned[root] = os.dup(root_pidfd)
            _signal(pinned[root], signal.SIGSTOP)
        tried = set(pinned)
        for _ in range(100):  # until no new process appears (stopped ones cannot fork)
            new = find_tree(root, marker, pidns) - tried
            if not new:
                break
            tried |= new
            for pid in new:
                pidfd = pin(pid, pidns)
                if pidfd is not None:
                    pinned[pid] = pidfd
                    _signal(pidfd, signal.SIGSTOP)
        for pidfd in pinned.values():
            _signal(pidfd, signal.SIGKILL)
        for pidfd in pinned.values():
            _signal(pidfd, signal.SIGCONT)
    finally:
        for pidfd in pinned.values():
            os.close(pidfd)
    return set(pinned)
