"""Killing a whole process tree inside a sandbox, grandchildren included.

Without a cgroup per exec (rootless hosts often have none), an exec's processes are found
two ways: the descendants of its first process, and any process in the sandbox's pid
namespace still carrying the exec's marker variable in its environment (a daemonised
grandchild re-parented to the sandbox's init keeps it).  Processes are stopped with SIGSTOP
until no new one appears, so none can fork away, then killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
from collections import defaultdict


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


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    fields = _stat(pid)
    return fields is not None and fields[0] != b"Z"


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _pidns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None


def _has_marker(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


def find_tree(root: int, marker: bytes | None = None, pidns: int | None = None) -> set[int]:
    """``root``, its descendants and the marked processes of the namespace ``pidns``."""
    children: dict[int, list[int]] = defaultdict(list)
    pids = _pids()
    for pid in pids:
        ppid = _ppid(pid)
        if ppid is not None:
            children[ppid].append(pid)
    found: set[int] = set()
    stack = [root] if os.path.exists(f"/proc/{root}") else []
    if marker is not None and pidns is not None:
        stack += [p for p in pids if _pidns(p) == pidns and _has_marker(p, marker)]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, ()))
    return found


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def kill_tree(root: int, marker: bytes | None = None, pidns: int | None = None) -> set[int]:
    """Freeze then SIGKILL ``root``'s whole tree; returns the pids that were killed."""
    stopped: set[int] = set()
    for _ in range(100):
        new = find_tree(root, marker, pidns) - stopped
        if not new:
            break
        for pid in new:
            _signal(pid, signal.SIGSTOP)
        stopped |= new
    for pid in stopped:
        _signal(pid, signal.SIGKILL)
    for pid in stopped:
        _signal(pid, signal.SIGCONT)
    return stopped
