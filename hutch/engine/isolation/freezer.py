"""Holding every process of a running sandbox still while its files are read (a
consistent filesystem snapshot), and letting them go again, always.

Two ways, the first the host allows:

* **cgroup v2 freezer**: ``cgroup.freeze`` of the sandbox's own cgroup, then wait for
  ``cgroup.events`` to say ``frozen 1``.  The kernel stops every task of the cgroup at
  once, whatever it forks, and the processes cannot tell (no signal, no state change a
  parent's ``waitpid`` sees).
* **stop signals** (cgroup v1 hosts, where the engine is delegated no freezer, and hosts
  without delegated cgroups at all): ``SIGSTOP`` to every process of the sandbox's pid
  namespace, found again until no new one appears (a stopped process cannot fork), then
  a wait until each is stopped; ``SIGCONT`` after, to the ones that were not stopped
  already.  Every signal goes through a pidfd of a process seen in that namespace
  (:mod:`hutch.engine.kernel.proctree`).  What a process can notice: a parent that waits
  with ``WUNTRACED`` sees its child stop and continue, and a ``SIGCONT`` handler runs.
  Commands the engine starts while the sandbox is held (an ``exec``) are not held.
  Nor are *traced* processes (``strace``, ``gdb``; ``TracerPid`` in their status): a stop
  signal goes to the tracer, which passes it on after the hold (``strace`` does, ``gdb``
  stops there), and no ``SIGCONT`` sent meanwhile undoes that, so the traced program
  stayed stopped for good after every snapshot; a tracee already in a trace stop (``t``)
  kept the ``SIGSTOP`` pending and stopped once its tracer resumed it (both measured:
  tests/security/test_issue19_red_team.py).  A traced process waits in a trace stop while
  its tracer is held, mostly; where it does not, it may write during the copy, which
  reads every entry safely anyway (:mod:`hutch.imagebuild.layercopy`).

Measured here (2 cores, cgroup v1 host: the stop-signal way): holding 10 busy processes
of a pid namespace and letting them go took 8 ms (median of 5; 60 ms the first time).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from hutch.engine.kernel import proctree

#: How long a freeze may take to settle before the snapshot gives up on it (seconds).
SETTLE = 5.0
#: Passes over /proc to find processes forked while the others were being stopped.
_PASSES = 100


class FreezeFailed(RuntimeError):
    pass


@contextlib.contextmanager
def frozen(cgroup_dir: Path | None, pidns: int | None, *,
           settle: float = SETTLE) -> Iterator[str]:
    """Hold the sandbox still for the ``with`` block; yields how (``cgroup`` or
    ``signals``).  ``cgroup_dir``: its cgroup v2 directory, if it has one; ``pidns``: the
    inode of its pid namespace.  The sandbox is let go on every way out (an error, a
    cancellation: the caller is a worker thread, which finishes the block)."""
    if cgroup_dir is not None and _freeze_cgroup(cgroup_dir, settle):
        try:
            yield "cgroup"
        finally:
            _write(cgroup_dir / "cgroup.freeze", "0")
        return
    if pidns is None:
        raise FreezeFailed("the sandbox's processes cannot be found (its init is gone)")
    held: dict[int, tuple[int, bool]] = {}
    try:
        _stop_all(pidns, held, time.monotonic() + settle)
        yield "signals"
    finally:
        for pidfd, was_stopped in held.values():
            with contextlib.suppress(ProcessLookupError):
                if not was_stopped:
                    signal.pidfd_send_signal(pidfd, signal.SIGCONT)
            os.close(pidfd)


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
    except OSError:
        return False
    return True


def _freeze_cgroup(cgroup_dir: Path, settle: float) -> bool:
    """Freeze a cgroup v2 directory and wait until the kernel says it is; False where this
    cgroup cannot be frozen (v1, not delegated), having let it go again."""
    freeze = cgroup_dir / "cgroup.freeze"
    if not freeze.exists() or not _write(freeze, "1"):
        return False
    deadline = time.monotonic() + settle
    delay = 0.0005
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if "frozen 1" in (cgroup_dir / "cgroup.events").read_text().splitlines():
                return True
        time.sleep(delay)  # (a worker thread) the kernel sets it within milliseconds
        delay = min(delay * 2, 0.02)
    _write(freeze, "0")
    raise FreezeFailed(f"the sandbox's cgroup did not freeze within {settle} s")


def _stop_all(pidns: int, held: dict[int, tuple[int, bool]], deadline: float) -> None:
    """SIGSTOP every process of ``pidns`` (recorded in ``held``: pidfd, and whether it was
    stopped before) until no new one appears, then wait until all are stopped.  Traced
    processes are recorded as stopped before and sent nothing (see the module's notes)."""
    traced: set[int] = set()
    for _ in range(_PASSES):
        new = [pid for pid in proctree.members(pidns) if pid not in held]
        if not new:
            break
        for pid in new:
            pidfd = proctree.pin(pid, pidns)
            if pidfd is None:
                continue
            if _traced(pid):
                held[pid] = (pidfd, True)  # left alone: neither stopped nor continued
                traced.add(pid)
                continue
            held[pid] = (pidfd, proctree.state(pid) in (b"T", b"t"))
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGSTOP)
    else:
        raise FreezeFailed("the sandbox's processes kept forking faster than they could "
                           "be stopped")
    delay = 0.0002
    for pid in held:
        while pid not in traced and not _held(pid):
            if time.monotonic() > deadline:
                raise FreezeFailed(f"a process of the sandbox (pid {pid}, state "
                                   f"{proctree.state(pid)!r}, waiting in {_wchan(pid)!r}) "
                                   "did not stop within the time allowed")
            time.sleep(delay)  # (a worker thread) a process stops once off the CPU
            delay = min(delay * 2, 0.01)


def _traced(pid: int) -> bool:
    """Whether a tracer is attached to ``pid`` (its status's ``TracerPid``)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"TracerPid:"):
                    return line.split()[1] != b"0"
    except (OSError, IndexError):
        pass
    return False


def _held(pid: int) -> bool:
    """Whether ``pid`` can run no more: stopped, dead, or a ``vfork`` parent waiting for
    its (stopped) child to exec, which sleeps uninterruptibly until then and takes its
    stop only afterwards (``sh`` runs commands so: in one snapshot of four of a shell loop,
    waiting for it to stop hung until the deadline)."""
    state = proctree.state(pid)
    if state in (b"T", b"t", b"Z", b"X", None):
        return True
    # (the wait is in kernel_clone on Linux 6.18, wait_for_vfork_done where not inlined)
    return state == b"D" and any(w in _wchan(pid) for w in (b"vfork", b"kernel_clone"))


def _wchan(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/wchan", "rb") as f:
            return f.read(200)
    except OSError:
        return b""
