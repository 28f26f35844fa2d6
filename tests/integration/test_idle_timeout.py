"""``idle_timeout``: a sandbox with no exec running and no stdin written for that long ends
like one that reached its timeout (124, SandboxTimeoutError)."""

from __future__ import annotations

import time
from typing import Any

import pytest

import hutch
from hutch.exception import InvalidError, SandboxTimeoutError


def test_an_idle_sandbox_is_stopped(engine: dict[str, Any]) -> None:
    start = time.monotonic()
    sb = hutch.Sandbox.create(idle_timeout=1, timeout=120)
    with pytest.raises(SandboxTimeoutError):
        sb.wait()
    assert sb.returncode == 124
    assert 1.0 <= time.monotonic() - start < 30


def test_a_running_exec_keeps_it_alive_and_the_clock_restarts_after(
        engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create(idle_timeout=1, timeout=120)
    try:
        assert sb.exec("sleep", "2.5").wait() == 0  # longer than idle_timeout
        assert sb.poll() is None  # the exec just ended: a new idle second has begun
        ended = time.monotonic()
        with pytest.raises(SandboxTimeoutError):
            sb.wait()
        assert time.monotonic() - ended >= 0.5
    finally:
        sb.terminate()


def test_stdin_writes_count_as_activity(engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create("cat", idle_timeout=1.5, timeout=120)
    try:
        for _ in range(4):  # 4 x 0.75 s = 3 s > idle_timeout, but never idle for 1.5 s
            sb.stdin.write(b"x\n")
            sb.stdin.drain()
            time.sleep(0.75)  # the gap between uses is what is being tested
        assert sb.poll() is None
    finally:
        sb.terminate()


def test_bad_idle_timeouts() -> None:
    for value in (0, -1, "10", float("nan")):
        with pytest.raises(InvalidError, match="idle_timeout"):
            hutch.Sandbox.create(idle_timeout=value)  # type: ignore[arg-type]


def test_an_open_tunnel_connection_counts_as_activity(engine: dict[str, Any]) -> None:
    import socket

    sb = hutch.Sandbox.create("python3", "-m", "http.server", "8000", unencrypted_ports=[8000],
                              readiness_probe=hutch.Probe.with_tcp(8000), idle_timeout=1.5,
                              timeout=120)
    try:
        sb.wait_until_ready()
        with socket.create_connection(sb.tunnels()[8000].tcp_socket, timeout=10):
            time.sleep(3)  # a held connection, twice as long as idle_timeout
            assert sb.poll() is None
        with pytest.raises(SandboxTimeoutError):  # idle once the connection is closed
            sb.wait()
    finally:
        sb.terminate()
