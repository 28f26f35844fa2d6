"""Namespace makers, run in children of the engine's fork server
(:mod:`hutch.engine.commands.forkserver`): a sandbox's network namespace, made and
configured, and a sandbox's own user namespace with its network namespace.

Why there: the fork server is single-threaded and small, so its children may
``unshare`` (a user namespace needs a single-threaded caller: the daemon could only start
``unshare``/``nsenter`` processes for it) and hold a handful of descriptors (libnftables
waits with ``select()``, which aborted a daemon holding 1024).  Standard library only.
Each reports to the engine through ``report(frame, fds)``: the fork server's framing.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from typing import Any

if __package__:
    from hutch.engine.network import nsconfig
else:  # pragma: no cover - imported by the fork server by path
    import nsconfig  # type: ignore[no-redef,import-not-found]

PR_SET_DUMPABLE = 4
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000

#: sends a frame (and descriptors) to the engine
Report = Callable[[dict[str, Any], list[int]], None]

#: libc, for the calls Python lacks (shared with the fork server and its zygotes)
libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    """A step of a child's set-up failed; the message names it."""


def check(result: int, what: str) -> None:
    """Raise :class:`SetupError` naming ``what`` when a libc call returned non-zero."""
    if result != 0:
        raise SetupError(f"{what}: {os.strerror(ctypes.get_errno())}")


def keep_large_allocations() -> None:
    """(the fork server) Have malloc serve large blocks from the heap and keep what is
    freed, in the fork server and its children: libnftables allocates and frees 2 MiB per
    firewall, and that ``munmap`` in a short-lived child flushed the TLB of every CPU it
    had run on (``smp_call_function_many_cond``: about 4% of the machine's CPU while
    sandboxes were created back to back).  The fork server itself allocates little."""
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)
    libc.mallopt(m_trim_threshold, 64 << 20)


def network_namespace(req: dict[str, Any], report: Report) -> int:
    """(a child of the fork server) Make a network namespace, send the engine a descriptor
    of it at once (the runtime creates the container in it meanwhile), then configure it
    and report (:func:`_configure`)."""
    try:
        check(libc.unshare(CLONE_NEWNET), "making a network namespace")
        made = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        report({"made": True}, [made])
        os.close(made)
    except (SetupError, OSError) as exc:
        report({"error": str(exc)}, [])
        return 1
    return _configure(req, report)


def sandbox_namespaces(req: dict[str, Any], report: Report, ready: int, go: int) -> int:
    """(a child of the fork server) Make a sandbox's own user namespace and, as its root,
    a network namespace that belongs to it (only a holder of CAP_SYS_ADMIN in the user
    namespace that owns a network namespace may mount a sysfs for it); send the engine
    descriptors of both, then configure the network namespace (:func:`_configure`).

    The maps (``req["map"]``) are written by the fork server, which is in the engine's
    user namespace: this process writes ``ready`` once it has unshared and waits for a
    byte on ``go``.  As root there it sets ``req["counts"]`` (``/proc/sys/user``).  This
    replaced ``unshare``, ``nsenter`` and three ``sh`` processes started from the daemon
    (about 4 ms, and 6 ms of CPU a sandbox), and then two more forks of the fork server
    (about 4 ms of CPU each, most of it copying the pages Python writes to)."""
    try:
        check(libc.unshare(CLONE_NEWUSER), "making a user namespace")
        os.write(ready, b"u")
        if os.read(go, 1) != b"m":
            return 1  # (the fork server reports why)
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        # (a change of credentials may make it dumpable again: nothing may trace it)
        check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "making the process non-dumpable")
        for name, value in dict(req.get("counts", {})).items():
            with open(f"/proc/sys/user/{os.path.basename(name)}", "w") as f:
                f.write(str(int(value)))
        check(libc.unshare(CLONE_NEWNET), "making a network namespace")
        made = [os.open(f"/proc/self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
                for kind in ("net", "user")]
        report({"made": True}, made)
        for fd in made:
            os.close(fd)
    except (SetupError, OSError, ValueError) as exc:
        report({"error": str(exc)}, [])
        return 1
    return _configure(req, report)


def write_maps(pid: int, lines: str) -> None:
    """(the fork server) Map the user namespace of ``pid`` with ``lines``."""
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(lines)


def _configure(req: dict[str, Any], report: Report) -> int:
    """Configure the calling process's network namespace with ``req["firewall"]``
    (:func:`nsconfig.configure`), and report."""
    firewall = req.get("firewall")
    try:
        if firewall is not None and not isinstance(firewall, str):
            raise nsconfig.ConfigError("the firewall is not an nftables ruleset")
        nsconfig.configure(firewall)
    except (nsconfig.ConfigError, OSError) as exc:
        report({"error": str(exc)}, [])
        return 1
    report({"configured": True}, [])
    return 0
