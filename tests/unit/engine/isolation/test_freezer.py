"""hutch.engine.isolation.freezer: every process of a pid namespace held still and let go
again, on every way out of the block; a cgroup v2 freeze where the cgroup has one.

Host processes stand in for a sandbox (the test's own pid namespace, filtered to the
processes it started, through ``_members``)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch.engine.isolation import freezer


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _running_again(procs: list[subprocess.Popen[bytes]], deadline: float = 10.0) -> bool:
    """Whether every one of ``procs`` left the stopped state within ``deadline`` seconds
    (SIGCONT wakes a process at once; a loaded machine may take a moment to show it)."""
    end = time.monotonic() + deadline
    while any(_state(p.pid) == "T" for p in procs):
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True


@pytest.fixture
def busy(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(3)]
    stopped = subprocess.Popen(["sleep", "60"])
    os.kill(stopped.pid, 19)  # SIGSTOP: stopped before the freeze, stays so after
    end = time.monotonic() + 10
    while _state(stopped.pid) != "T":  # (it stops once it is scheduled)
        assert time.monotonic() < end, _state(stopped.pid)
        time.sleep(0.005)
    procs.append(stopped)
    mine = [p.pid for p in procs]
    monkeypatch.setattr(freezer.proctree, "members", lambda pidns: list(mine))
    monkeypatch.setattr(freezer.proctree, "pin", lambda pid, ns: os.pidfd_open(pid))
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def test_signals_hold_every_process_and_let_them_go(busy: list[subprocess.Popen[bytes]]
                                                   ) -> None:
    with freezer.frozen(None, 1) as how:
        assert how == "signals"
        assert {_state(p.pid) for p in busy} == {"T"}
    assert _running_again(busy[:3]), [_state(p.pid) for p in busy]
    assert _state(busy[3].pid) == "T"  # it was stopped by someone else: it stays so


def test_they_are_let_go_after_an_error(busy: list[subprocess.Popen[bytes]]) -> None:
    with pytest.raises(RuntimeError), freezer.frozen(None, 1):
        raise RuntimeError("copy failed")
    assert _running_again(busy[:3]), [_state(p.pid) for p in busy]


def test_no_pid_namespace_is_an_error() -> None:
    with pytest.raises(freezer.FreezeFailed), freezer.frozen(None, None):
        pass


def test_a_cgroup_v2_freeze_waits_for_frozen_and_thaws(tmp_path: Path) -> None:
    (tmp_path / "cgroup.freeze").write_text("0")
    (tmp_path / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    with freezer.frozen(tmp_path, None) as how:
        assert how == "cgroup"
        assert (tmp_path / "cgroup.freeze").read_text() == "1"
    assert (tmp_path / "cgroup.freeze").read_text() == "0"


def test_a_cgroup_that_never_freezes_is_thawed_and_refused(tmp_path: Path) -> None:
    (tmp_path / "cgroup.freeze").write_text("0")
    (tmp_path / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    with pytest.raises(freezer.FreezeFailed), freezer.frozen(tmp_path, None, settle=0.05):
        pass
    assert (tmp_path / "cgroup.freeze").read_text() == "0"


def test_a_v1_host_falls_back_to_signals(tmp_path: Path,
                                         busy: list[subprocess.Popen[bytes]]) -> None:
    with freezer.frozen(tmp_path, 1) as how:  # no cgroup.freeze there
        assert how == "signals"
