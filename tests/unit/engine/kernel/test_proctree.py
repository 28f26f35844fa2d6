"""hutch.engine.kernel.proctree on real host processes: finding and killing whole trees."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from hutch.engine.kernel import proctree

DEADLINE = 10.0


def _wait_until(cond: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    end = time.monotonic() + timeout
    delay = 0.001
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of ``pid``, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    return fields[0].decode(), int(fields[1])


def _dead(pid: int) -> bool:
    st = _stat(pid)
    return st is None or st[0] in ("Z", "X")


def _cmdline(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[:-1]
    except OSError:
        return []


def _children(pid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[1] == pid:
                out.add(int(entry))
    return out


def _sleep_children(pid: int) -> set[int]:
    return {c for c in _children(pid) if _cmdline(c) == [b"sleep", b"100"]}


def _reap(proc: subprocess.Popen[bytes]) -> int:
    """Wait for our direct child with waitpid, polling against a deadline."""
    end = time.monotonic() + DEADLINE
    while True:
        pid, status = os.waitpid(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode
        if time.monotonic() > end:
            pytest.fail(f"child {proc.pid} did not exit")
        time.sleep(0.01)


@pytest.fixture
def cleanup() -> Iterator[Callable[[int], None]]:
    """Register pids to SIGKILL at the end of the test, whatever happened."""
    pids: list[int] = []
    yield pids.append
    for pid in pids:
        if not _dead(pid):
            try:
                os.kill(pid, signal.SIGKILL)
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


@pytest.fixture
def popen(cleanup: Callable[[int], None]) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, **kw: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(list(args), **kw)  # type: ignore[call-overload]
        procs.append(proc)
        cleanup(proc.pid)
        return proc

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            proc.wait(timeout=DEADLINE)


def _tree(popen: Callable[..., subprocess.Popen[bytes]], cleanup: Callable[[int], None]
          ) -> tuple[subprocess.Popen[bytes], set[int]]:
    shell = popen("sh", "-c", "sleep 100 & sleep 100 & wait")
    _wait_until(lambda: len(_sleep_children(shell.pid)) == 2, "both sleeps to start")
    sleeps = _sleep_children(shell.pid)
    for pid in sleeps:
        cleanup(pid)
    return shell, sleeps


def test_find_tree_finds_descendants(popen: Callable[..., subprocess.Popen[bytes]],
                                     cleanup: Callable[[int], None]) -> None:
    shell, sleeps = _tree(popen, cleanup)
    found = proctree.find_tree(shell.pid)
    assert found == {shell.pid} | sleeps
    # a subtree only: the shell's parent (this test) is not part of it
    assert os.getpid() not in found
    assert proctree.find_tree(next(iter(sleeps))) == {next(iter(sleeps))}


def test_find_tree_of_missing_pid_is_empty(popen: Callable[..., subprocess.Popen[bytes]]
                                           ) -> None:
    proc = popen("true")
    proc.wait(timeout=DEADLINE)
    assert proctree.find_tree(proc.pid) == set()


def test_kill_tree_kills_shell_and_grandchildren(
    popen: Callable[..., subprocess.Popen[bytes]], cleanup: Callable[[int], None]
) -> None:
    shell, sleeps = _tree(popen, cleanup)
    killed = proctree.kill_tree(shell.pid)
    assert killed == {shell.pid} | sleeps
    assert _reap(shell) == -signal.SIGKILL
    # The sleeps were re-parented (to init or a subreaper); they must be gone or zombies.
    for pid in sleeps:
        _wait_until(lambda pid=pid: _dead(pid), f"sleep {pid} to die")  # type: ignore[misc]


def test_kill_tree_of_stopped_tree(popen: Callable[..., subprocess.Popen[bytes]],
                                   cleanup: Callable[[int], None]) -> None:
    """A tree already stopped (SIGSTOP) still dies: SIGKILL works on stopped processes."""
    shell, sleeps = _tree(popen, cleanup)
    for pid in {shell.pid} | sleeps:
        os.kill(pid, signal.SIGSTOP)
    proctree.kill_tree(shell.pid)
    assert _reap(shell) == -signal.SIGKILL
    for pid in sleeps:
        _wait_until(lambda pid=pid: _dead(pid), f"sleep {pid} to die")  # type: ignore[misc]


def _daemonise(popen: Callable[..., subprocess.Popen[bytes]],
               cleanup: Callable[[int], None], marker: str) -> int:
    """Start a shell that leaves a setsid'd sleep behind and exits; returns the sleep's pid."""
    key, value = marker.split("=", 1)
    shell = popen(
        "sh", "-c",
        "(setsid sleep 100 </dev/null >/dev/null 2>&1 & echo $!); exit 0",
        env={**os.environ, key: value}, stdout=subprocess.PIPE,
    )
    assert shell.stdout is not None
    out = shell.stdout.read()
    assert _reap(shell) == 0
    pid = int(out.decode().strip())
    cleanup(pid)
    _wait_until(lambda: _cmdline(pid) == [b"sleep", b"100"], "the detached sleep to exec")
    assert _stat(pid) is not None
    return pid


def test_marker_finds_detached_process(popen: Callable[..., subprocess.Popen[bytes]],
                                       cleanup: Callable[[int], None]) -> None:
    marker = f"HUTCH_EXEC_ID=x-{uuid.uuid4().hex}"
    detached = _daemonise(popen, cleanup, marker)
    pidns = os.stat("/proc/self/ns/pid").st_ino
    gone_root = 0x3FFFFFFF  # above pid_max: no such process
    # Without the marker nothing leads from the (exited) root to the detached process.
    assert proctree.find_tree(gone_root) == set()
    assert detached not in proctree.find_tree(gone_root, marker=None, pidns=pidns)
    # With it, the detached process is found even though its parent is gone.
    assert detached in proctree.find_tree(gone_root, marker=marker.encode(), pidns=pidns)
    # The marker is a whole environment entry, not a prefix or a substring.
    assert detached not in proctree.find_tree(gone_root, marker=marker[:-1].encode(),
                                              pidns=pidns)
    # Only processes of the given pid namespace are considered.
    assert detached not in proctree.find_tree(gone_root, marker=marker.encode(),
                                              pidns=pidns + 1)
    # This test itself does not carry the marker.
    assert os.getpid() not in proctree.find_tree(gone_root, marker=marker.encode(),
                                                 pidns=pidns)


def test_kill_tree_with_marker_kills_detached_process(
    popen: Callable[..., subprocess.Popen[bytes]], cleanup: Callable[[int], None]
) -> None:
    marker = f"HUTCH_EXEC_ID=x-{uuid.uuid4().hex}"
    detached = _daemonise(popen, cleanup, marker)
    bystander = popen("sleep", "100")  # same namespace, no marker: must survive
    pidns = os.stat("/proc/self/ns/pid").st_ino
    killed = proctree.kill_tree(0x3FFFFFFF, marker=marker.encode(), pidns=pidns)
    assert detached in killed
    assert bystander.pid not in killed
    _wait_until(lambda: _dead(detached), "the detached sleep to die")
    assert _stat(bystander.pid) is not None and not _dead(bystander.pid)
    assert bystander.poll() is None


def test_kill_tree_spares_processes_outside_the_namespace(
        popen: Callable[..., subprocess.Popen[bytes]], cleanup: Callable[[int], None]) -> None:
    """An exec's pid may be an unrelated process's by the time it is killed: with the
    sandbox's pid namespace given, nothing outside it is signalled."""
    shell, sleeps = _tree(popen, cleanup)
    elsewhere = os.stat("/proc/self/ns/pid").st_ino + 1  # a namespace none of them is in
    assert proctree.find_tree(shell.pid, pidns=elsewhere) == set()
    assert proctree.pin(shell.pid, elsewhere) is None
    assert proctree.kill_tree(shell.pid, b"X=1", pidns=elsewhere) == set()
    assert not _dead(shell.pid) and not any(_dead(p) for p in sleeps)


def test_kill_tree_through_a_held_pidfd(popen: Callable[..., subprocess.Popen[bytes]],
                                        cleanup: Callable[[int], None]) -> None:
    shell, sleeps = _tree(popen, cleanup)
    here = os.stat("/proc/self/ns/pid").st_ino
    pidfd = os.pidfd_open(shell.pid)
    try:
        assert proctree.kill_tree(shell.pid, pidns=here, root_pidfd=pidfd) == {shell.pid, *sleeps}
    finally:
        os.close(pidfd)
    assert _reap(shell) == -signal.SIGKILL
    _wait_until(lambda: all(_dead(p) for p in sleeps), "the sleeps to die")
