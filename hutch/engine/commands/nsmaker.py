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

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000

#: sends a frame (and descriptors) to the engine
Report = Callable[[dict[str, Any], list[int]], None]

_libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    """A step failed; the message names it."""


def _check(result: int, what: str) -> None:
    if result != 0:
        raise SetupError(f"{what}: {os.strerror(ctypes.get_errno())}")


def network_namespace(req: dict[str, Any], report: Report, existing: int | None) -> int:
    """Make a network namespace (or join ``existing``), send the engine a descriptor of it
    at once (the runtime creates the container in it meanwhile), then configure it
    (:func:`nsconfig.configure` with ``req["firewall"]``) and report."""
    try:
        if existing is None:
            _check(_libc.unshare(CLONE_NEWNET), "making a network namespace")
        else:
            _check(_libc.setns(existing, CLONE_NEWNET), "joining the network namespace")
            os.close(existing)
        made = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        report({"made": True}, [made])
        os.close(made)
        firewall = req.get("firewall")
        nsconfig.configure(firewall if isinstance(firewall, str) else None)
    except (SetupError, nsconfig.ConfigError, OSError) as exc:
        report({"error": str(exc)}, [])
        return 1
    report({"configured": True}, [])
    return 0


def user_namespace(req: dict[str, Any], report: Report) -> int:
    """Make a sandbox's user namespace, mapped with ``req["map"]`` (uid_map and gid_map
    lines), and a network namespace that belongs to it; send the engine descriptors of
    both (they live on in them).  A network namespace belongs to the user namespace it was
    made in, and only a holder of CAP_SYS_ADMIN there may mount a sysfs for it.

    This process (in the engine's user namespace, whose root may write the maps) forks a
    child that unshares the user namespace, waits for its maps, becomes its root, sets its
    ``req["counts"]`` (``/proc/sys/user``) and unshares the network namespace.  It replaced
    ``unshare``, ``nsenter`` and three ``sh`` processes started from the daemon (about 4 ms
    and 6 ms of CPU a sandbox)."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(ready_r)
            os.close(go_w)
            code = _own_namespaces(req, report, ready_w, go_r)
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(go_r)
    try:
        if os.read(ready_r, 1) == b"u":
            for name in ("uid_map", "gid_map"):
                with open(f"/proc/{pid}/{name}", "w") as f:
                    f.write(str(req["map"]))
            os.write(go_w, b"m")
    except OSError as exc:
        report({"error": f"writing the user namespace's maps: {exc}"}, [])
    finally:
        os.close(go_w)
        os.close(ready_r)
        os.waitpid(pid, 0)
    return 0


def _own_namespaces(req: dict[str, Any], report: Report, ready: int, go: int) -> int:
    """(the child of :func:`user_namespace`)"""
    try:
        _check(_libc.unshare(CLONE_NEWUSER), "making a user namespace")
        os.write(ready, b"u")
        if os.read(go, 1) != b"m":
            return 1  # (its parent reports why)
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        for name, value in dict(req.get("counts", {})).items():
            with open(f"/proc/sys/user/{os.path.basename(name)}", "w") as f:
                f.write(str(int(value)))
        _check(_libc.unshare(CLONE_NEWNET), "making a network namespace")
        made = [os.open(f"/proc/self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
                for kind in ("user", "net")]
        report({"made": True}, made)
        return 0
    except (SetupError, OSError, ValueError) as exc:
        report({"error": str(exc)}, [])
        return 1
