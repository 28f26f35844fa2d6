"""Terminals and fork-exec as the zygote uses them, on the host's own devpts."""

from __future__ import annotations

import errno
import os
import select
import signal
import time
from pathlib import Path

import pytest

from hutch.engine.commands import terminals

DEFAULTS = tuple(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP})


def _read_until(fd: int, needle: bytes, deadline: float = 10.0) -> bytes:
    seen, end = b"", time.monotonic() + deadline
    while needle not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
        assert ready, f"no {needle!r} in {seen!r}"
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the last holder of the peer closed it
            break
        if not chunk:
            break
        seen += chunk
    return seen


def test_a_new_terminal_has_its_size_and_a_peer() -> None:
    master, peer = terminals.open_pty(33, 111)
    try:
        assert os.isatty(peer)
        assert terminals.get_size(peer) == (33, 111)
        terminals.set_size(master, 10, 20)
        assert terminals.get_size(peer) == (10, 20)
        assert os.get_inheritable(master) is False and os.get_inheritable(peer) is False
    finally:
        os.close(master)
        os.close(peer)


def test_a_command_leads_a_session_on_the_terminal() -> None:
    master, peer = terminals.open_pty(24, 80)
    try:
        pid = terminals.fork_exec("/bin/sh", ["sh", "-c", 'tty; stty size; echo "sid=$(ps -o '
                                               'sid= -p $$) pid=$$"'],
                                  {"PATH": "/usr/bin:/bin"}, "/", [peer] * 3, terminal=True,
                                  ids=None, default_signals=DEFAULTS)
    finally:
        os.close(peer)
    out = _read_until(master, b"pid=")
    out += _read_until(master, b"\n")
    os.close(master)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert b"/dev/pts/" in out and b"24 80" in out
    sid, _, own = out.split(b"sid=")[1].partition(b" pid=")
    assert int(sid) == int(own.strip())  # it leads its own session


def test_a_failed_step_is_reported_and_the_child_reaped(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="chdir `/nonexistent-dir`"):
        terminals.fork_exec("/bin/true", ["true"], {}, "/nonexistent-dir", [0, 1, 2],
                            terminal=False, ids=None, default_signals=DEFAULTS)
    with pytest.raises(OSError, match="exec `/nonexistent`") as caught:
        terminals.fork_exec("/nonexistent", ["x"], {}, "/", [0, 1, 2], terminal=False,
                            ids=None, default_signals=DEFAULTS)
    assert caught.value.errno == 2


def test_ptmx_that_is_not_the_device_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    fake = tmp_path / "ptmx"
    os.mkfifo(fake)  # a sandbox's root may put a FIFO there: no block, a refusal
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a: real_open(
        str(fake) if path == "/dev/ptmx" else path, *a))
    with pytest.raises(OSError, match="not the pseudo-terminal multiplexer"):
        terminals.open_pty(24, 80)


class _Wedged:
    """Signals to reset whose iteration never ends: a child held before its execve."""

    def __iter__(self) -> _Wedged:
        return self

    def __next__(self) -> int:
        time.sleep(3600)
        raise StopIteration


def test_a_child_held_before_its_exec_is_killed_in_time(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    monkeypatch.setattr(terminals, "START_TIMEOUT", 0.5)
    started = time.monotonic()
    with pytest.raises(OSError, match="did not start within") as caught:
        terminals.fork_exec("/bin/true", ["true"], {}, "/", [0, 1, 2], terminal=False,
                            ids=None, default_signals=_Wedged())
    assert caught.value.errno == errno.ETIMEDOUT
    assert time.monotonic() - started < 10  # killed and reaped, not waited for
