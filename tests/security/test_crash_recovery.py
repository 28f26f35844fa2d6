"""Crash recovery: the engine's processes killed with SIGKILL, from the caller's side.

A crashed daemon must not fail the next call ("lost the connection ... Connection
refused"): the SDK reaches a restarted engine.  When the pause process dies too, the user
namespace the sandboxes were made in is gone for the engine (a new pause process makes a
new one, from which nothing can join the old sandboxes' namespaces): such a sandbox must
not be listed as running, and what remains of it (its init and what runs in it, its
slirp4netns, its zygote) must end, with its directories removed.

The processes are watched through pidfds opened before the kill, so a pid reused by an
unrelated process afterwards can neither pass nor fail a check.
"""

from __future__ import annotations

import os
import select
import signal
from pathlib import Path
from typing import Any

import pytest

import hutch
from hutch.sdk.transport import request_blocking
from tests.helpers import children_of, cmdline_of, process_alive, wait_for

#: Seconds the remains of a lost sandbox have to end once the next engine runs.
CLEANUP_DEADLINE = 20.0


def _runtime() -> Path:
    return Path(os.environ["HUTCH_RUNTIME_DIR"])




def _ended(pidfd: int) -> bool:
    """Whether the process of ``pidfd`` has exited (a pidfd polls readable then)."""
    return bool(select.select([pidfd], [], [], 0)[0])


def _sigkill_and_wait(pid: int, what: str) -> None:
    pidfd = os.pidfd_open(pid)
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        wait_for(lambda: _ended(pidfd), what=f"{what} to die")
    finally:
        os.close(pidfd)


def test_a_call_on_a_live_client_after_the_daemon_is_killed_succeeds(
        engine: dict[str, Any]) -> None:
    """The client keeps its pooled connection (as a program using the SDK does): the
    first call after the crash finds it dead and the socket refusing, and must still reach
    a restarted engine, for a read and for an exec alike."""
    sb = hutch.Sandbox.create(timeout=120)
    try:
        assert sb.exec("true").wait() == 0
        for _ in range(3):
            old = request_blocking("GET", "/v1/engine")["pid"]
            _sigkill_and_wait(old, "the daemon")
            assert sb.info()["state"] == "running"  # a GET
            assert request_blocking("GET", "/v1/engine")["pid"] != old
            _sigkill_and_wait(request_blocking("GET", "/v1/engine")["pid"], "the daemon")
            p = sb.exec("echo", "again")  # a POST: nothing reached the dead engine
            assert p.stdout.read() == "again\n"
            assert p.wait() == 0
    finally:
        sb.terminate()


def test_sandboxes_of_a_dead_engine_namespace_are_reaped(engine: dict[str, Any]) -> None:
    """Daemon and pause process killed while a sandbox runs an exec: the next call
    succeeds, the sandbox is listed as exited with a reason, everything of it ends and its
    directories go, and a new sandbox works."""
    data_dir = Path(engine["data_dir"])
    sb = hutch.Sandbox.create(timeout=300)  # network access: it has a slirp4netns
    p = sb.exec("sh", "-c", "echo started; exec sleep 1000")
    for chunk in p.stdout:  # (the exec runs once its first output arrives)
        assert chunk.startswith("started")
        break
    sandbox_dir = data_dir / "sandboxes" / sb.object_id
    pids: dict[str, int] = {"init": int((sandbox_dir / "init.pid").read_text())}
    pids["slirp4netns"] = int((sandbox_dir / "slirp4netns.pid").read_text())
    assert b"slirp4netns" in cmdline_of(pids["slirp4netns"])
    daemon = request_blocking("GET", "/v1/engine")["pid"]
    pause = int((_runtime() / "pause.pid").read_text())
    fork_servers = [c for c in children_of(daemon) if b"forkserver" in cmdline_of(c)]
    for server in fork_servers:
        for n, zygote in enumerate(children_of(server)):
            pids[f"zygote{n}"] = zygote
    if engine["exec_via"] == "zygote":
        assert any(name.startswith("zygote") for name in pids), "no zygote found"
    pidfds = {name: os.pidfd_open(pid) for name, pid in pids.items()}
    try:
        _sigkill_and_wait(daemon, "the daemon")
        _sigkill_and_wait(pause, "the pause process")
        # The first call after the crash starts a new engine in a new namespace.
        listed = {s.object_id for s in hutch.Sandbox.list()}
        assert sb.object_id not in listed, "a sandbox nobody can use is listed as running"
        info = hutch.Sandbox.from_id(sb.object_id).info()
        assert info["state"] == "exited", info
        assert info["exit_reason"] == "lost", info
        assert "namespace" in (info.get("exit_detail") or ""), info
        with pytest.raises(hutch.exception.SandboxTerminatedError, match="namespace"):
            hutch.Sandbox.from_id(sb.object_id).wait()
        hutch.Sandbox.from_id(sb.object_id).wait(raise_on_termination=False)
        assert int((_runtime() / "pause.pid").read_text()) != pause
        for name, pidfd in pidfds.items():
            wait_for(lambda pidfd=pidfd: _ended(pidfd), timeout=CLEANUP_DEADLINE,
                     what=f"the old sandbox's {name} (pid {pids[name]}) to end")
        for sub in ("upper", "work", "merged"):
            assert not (sandbox_dir / sub).exists(), f"{sub} of the lost sandbox is left"
        assert not (sandbox_dir / "slirp4netns.pid").exists()
        # The engine's new mount namespace holds nothing of the old sandbox either.
        new_pause = int((_runtime() / "pause.pid").read_text())
        assert str(sandbox_dir) not in Path(f"/proc/{new_pause}/mountinfo").read_text()
        # A new sandbox works, with network access and execs.
        fresh = hutch.Sandbox.create(timeout=60)
        try:
            q = fresh.exec("echo", "fresh")
            assert q.stdout.read() == "fresh\n" and q.wait() == 0
        finally:
            fresh.terminate()
    finally:
        for pidfd in pidfds.values():
            os.close(pidfd)


def test_a_daemon_killed_without_its_pause_process_keeps_sandboxes(
        engine: dict[str, Any]) -> None:
    """The counterpart: only the daemon dies, so the namespace lives on and the sandbox
    is adopted, not reaped (the lost-sandbox check must not take every restart for one)."""
    sb = hutch.Sandbox.create(timeout=120)
    try:
        init = int((Path(engine["data_dir"]) / "sandboxes" / sb.object_id
                    / "init.pid").read_text())
        _sigkill_and_wait(request_blocking("GET", "/v1/engine")["pid"], "the daemon")
        assert sb.info()["state"] == "running"
        assert process_alive(init)
        assert sb.exec("echo", "adopted").stdout.read() == "adopted\n"
    finally:
        sb.terminate()
