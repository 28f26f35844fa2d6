"""Red team of issue 19: filesystem snapshots, live image mounts, terminals and execs as a
user, attacked from inside a sandbox and through hostile arguments.

What is already covered lives in ``test_snapshot_attacks.py`` and
``test_pty_and_user_attacks.py``; each test here is one more attack, and asserts the safe
outcome.  Four of them found holes, fixed in the engine:

* an init that ``chroot``-s moved where ``mount_image`` and ``snapshot_directory``
  resolve paths: an image went over the sandbox's ``/proc/1`` and ``/`` copied ``/proc``
  (:func:`hutch.engine.kernel.mountns.namespace_root`);
* one sandbox took every pseudo-terminal of the host's shared pool, and no other sandbox
  could get a terminal (``PTYS_MAX`` in :mod:`hutch.engine.runtime.ociconfig`);
* a traced process (``strace``, ``gdb``) stayed stopped for good after a snapshot on a
  host without a cgroup v2 freezer (:mod:`hutch.engine.isolation.freezer`).
* a sandbox that renamed the directory above an image mount made ``unmount_image`` an
  internal engine error (:func:`hutch.engine.kernel.mountns.detach`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import hutch
from hutch.engine.commands.execs import MAX_BUFFERED
from hutch.engine.runtime.ociconfig import PTYS_MAX
from hutch.exception import InvalidError
from hutch.sdk.transport import request_blocking


@pytest.fixture
def sb(engine: dict[str, Any]) -> Iterator[Any]:
    sandbox = hutch.Sandbox.create(timeout=300)
    yield sandbox
    sandbox.terminate(grace_period=0)


def _sh(sandbox: Any, script: str) -> str:
    p = sandbox.exec("sh", "-c", script)
    out = p.stdout.read()
    assert p.wait() == 0, p.stderr.read()
    return str(out)


def _first_line(process: Any) -> str:
    """The first line a process writes (its output comes in chunks, not lines)."""
    text = ""
    for chunk in process.stdout:
        text += chunk
        if "\n" in text:
            break
    return text.partition("\n")[0]


def _until(what: str, check: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"still not {what} after {seconds} s"
        time.sleep(0.05)


def _still_well(sandbox: Any) -> None:
    assert request_blocking("GET", "/v1/health")
    assert _sh(sandbox, "echo alive") == "alive\n"


# mounts and directory snapshots ----------------------------------------------------------
def test_a_chrooted_init_cannot_steer_mounts_or_snapshots_into_proc(
        engine: dict[str, Any]) -> None:
    """The sandbox's init holds CAP_SYS_CHROOT and its code is the sandbox's: after
    ``chroot("/proc")``, ``/1`` was the sandbox's ``/proc/1`` to an engine that resolved
    paths in ``/proc/<init>/root``, and no check of ``/proc`` saw it."""
    sandbox = hutch.Sandbox.create(
        "python3", "-c", "import os, sys, time\nos.chroot('/proc')\nprint('in', flush=True)\n"
        "time.sleep(600)\n", timeout=300)
    try:
        _until("chrooted", lambda: _sh(sandbox, "readlink /proc/1/root") == "/proc\n")
        _sh(sandbox, "mkdir -p /work && echo marker > /work/marker")
        image = hutch.Image.debian_slim()
        sandbox.mount_image("/1", image)
        mounts = _sh(sandbox, "cut -d' ' -f2 /proc/self/mounts")
        assert "/proc/1" not in mounts.split(), mounts
        assert "/1" in mounts.split(), mounts
        assert _sh(sandbox, "test -x /1/usr/bin/python3 && echo ok") == "ok\n"
        sandbox.unmount_image("/1")
        # a directory snapshot names the directory the sandbox's commands see
        copy = sandbox.snapshot_directory("/work")
        holder = hutch.Sandbox.create(timeout=120)
        try:
            holder.mount_image("/seen", copy)
            assert _sh(holder, "cat /seen/marker") == "marker\n"
        finally:
            holder.terminate(grace_period=0)
        with pytest.raises(InvalidError, match="kernel"):
            sandbox.snapshot_directory("/proc/tty")
        _still_well(sandbox)
    finally:
        sandbox.terminate(grace_period=0)


def test_an_unmount_after_the_sandbox_moved_its_mount_is_a_typed_error(sb: Any) -> None:
    """The sandbox may rename the directory above an image mount (the mount moves with
    it): the unmount must answer with a typed error, never an engine fault, and work again
    once the path is back."""
    _sh(sb, "mkdir /top")
    sb.mount_image("/top/img", hutch.Image.debian_slim())
    _sh(sb, "mv /top /moved")
    with pytest.raises(InvalidError):
        sb.unmount_image("/top/img")
    _sh(sb, "mkdir -p /top/img")  # a plain directory where the mount was: not it
    with pytest.raises(InvalidError, match="no image"):
        sb.unmount_image("/top/img")
    _sh(sb, "rm -r /top && mv /moved /top")
    sb.unmount_image("/top/img")
    assert _sh(sb, "ls -A /top/img | wc -l") == "0\n"
    _still_well(sb)


# the freezer (stop signals: hosts without a cgroup v2 freezer) ---------------------------
#: A tracer that behaves as strace does: it passes every signal on to its tracee and keeps
#: a group-stopped tracee stopped (``PTRACE_LISTEN``).  ``held``: the tracee waits in a trace
#: stop until ``/tmp/go`` appears; ``strace``: it runs, stopping at every system call.
TRACER = r'''
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
CONT, SEIZE, INTERRUPT, LISTEN, SYSCALL = 7, 0x4206, 0x4207, 0x4208, 24
def pt(req, pid, data=0):
    if libc.ptrace(req, pid, None, ctypes.c_void_p(data)) < 0:
        raise OSError(ctypes.get_errno(), "ptrace %d" % req)
child = os.fork()
if child == 0:
    n = 0
    while True:
        n += 1
        with open("/tmp/counter.tmp", "w") as f:
            f.write(str(n))
        os.rename("/tmp/counter.tmp", "/tmp/counter")
        time.sleep(0.01)
pt(SEIZE, child)
pt(INTERRUPT, child)
os.waitpid(child, 0)
mode = sys.argv[1]
step = SYSCALL if mode == "strace" else CONT
print("ready", flush=True)
if mode == "held":
    while not os.path.exists("/tmp/go"):
        time.sleep(0.01)
pt(step, child)
while True:
    _, st = os.waitpid(child, 0)
    if not os.WIFSTOPPED(st):
        break
    sig = os.WSTOPSIG(st)
    if st >> 16 == 128:
        pt(LISTEN, child)
    elif sig in (5, 0x85):
        pt(step, child)
    else:
        pt(step, child, sig)
'''


@pytest.mark.parametrize("mode", ["held", "strace"])
def test_a_traced_process_runs_on_after_a_snapshot(sb: Any, mode: str) -> None:
    """A debugger or strace in the sandbox: the stop signals of a hold went to the tracer,
    which passed them on once let go, and the traced program stayed stopped for good."""
    tracer = sb.exec("python3", "-c", TRACER, mode)
    assert _first_line(tracer) == "ready"
    counter = "cat /tmp/counter 2>/dev/null || echo 0"
    if mode == "strace":
        first = _sh(sb, counter)
        _until("counting", lambda: _sh(sb, counter) != first)
    sb.snapshot_filesystem(timeout=30)
    if mode == "held":
        _sh(sb, "touch /tmp/go")
    after = _sh(sb, counter)
    _until("counting after the snapshot", lambda: _sh(sb, counter) != after)
    assert tracer.poll() is None
    tracer.kill()
    _still_well(sb)


# terminals --------------------------------------------------------------------------------
PTY_HOG = r'''
import os, resource, time
resource.setrlimit(resource.RLIMIT_NOFILE, (5000, 5000))
fds = []
try:
    while len(fds) < 4000:
        fds.append(os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY))
except OSError as exc:
    print(len(fds), exc.errno, flush=True)
else:
    print(len(fds), 0, flush=True)
time.sleep(600)
'''


def test_one_sandbox_cannot_take_every_terminal(engine: dict[str, Any]) -> None:
    """Every devpts instance but the host's draws from the kernel's one pool of terminals
    (``kernel.pty.max``): one sandbox opening ``/dev/ptmx`` in a loop took all of it, and
    the next ``exec(pty=True)`` of any other sandbox failed with ENOSPC."""
    hog = hutch.Sandbox.create(timeout=120)
    other = hutch.Sandbox.create(timeout=120)
    try:
        holder = hog.exec("python3", "-c", PTY_HOG)
        count, err = _first_line(holder).split()
        assert int(count) <= PTYS_MAX and int(err) == 28, (count, err)  # ENOSPC, its own
        p = other.exec("tty", pty=True)
        assert p.stdout.read().strip().startswith("/dev/pts/")
        assert p.wait() == 0
        holder.kill()
    finally:
        hog.terminate(grace_period=0)
        other.terminate(grace_period=0)


def _relays(sandbox_id: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"terminalrelay" in cmdline and sandbox_id.encode() in cmdline:
                found.append(int(entry))
    return found


def test_a_terminal_hung_up_by_the_sandbox_ends_its_relay(engine: dict[str, Any]) -> None:
    """The sandbox closes every end of its terminal and goes on running: the relay outside
    it sees the hang-up and ends (it must not spin on a dead terminal), and the engine
    still answers for the sandbox."""
    sandbox = hutch.Sandbox.create(
        "sh", "-c", "read line; exec sleep 600 </dev/null >/dev/null 2>&1", pty=True,
        timeout=120)
    try:
        _until("relay started", lambda: bool(_relays(sandbox.object_id)))
        sandbox.stdin.write(b"go\n")
        sandbox.stdin.drain()
        _until("relay ended", lambda: not _relays(sandbox.object_id))
        assert sandbox.poll() is None
        _still_well(sandbox)
    finally:
        sandbox.terminate(grace_period=0)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


FLOOD = r'''
import os
total, chunk = 0, b"x" * 65536
while total < 1 << 30:
    total += os.write(1, chunk)
    with open("/tmp/written.tmp", "w") as f:
        f.write(str(total))
    os.rename("/tmp/written.tmp", "/tmp/written")
'''


def test_a_terminal_flood_nobody_reads_stays_bounded_in_the_engine(
        engine: dict[str, Any], sb: Any) -> None:
    """A command on a terminal writes as fast as it can and nobody reads: the engine holds
    a bounded part of it (``MAX_BUFFERED``) and the command waits on its full terminal."""
    pid = int(request_blocking("GET", "/v1/engine")["pid"])  # (other tests restart it)
    before = _rss_kib(pid)
    flood = sb.exec("python3", "-c", FLOOD, pty=True)
    seen: list[int] = []

    def stalled() -> bool:
        seen.append(int(_sh(sb, "cat /tmp/written 2>/dev/null || echo 0")))
        # (it stalled at 16711680 bytes here: the engine's MAX_BUFFERED, less what the
        # terminal holds)
        return len(seen) > 10 and seen[-1] == seen[-10] and seen[-1] > MAX_BUFFERED // 2

    _until("the flood waits on its full terminal", stalled, 120)
    grown = _rss_kib(pid) - before
    assert grown < 2 * MAX_BUFFERED // 1024 + 32 * 1024, f"the engine grew by {grown} KiB"
    assert flood.poll() is None
    flood.kill()
    _still_well(sb)
