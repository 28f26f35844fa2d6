"""The engine daemon: its socket, restarts after SIGKILL, and reaping while it was down."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
from pathlib import Path
from typing import Any

import hutch
from hutch.api import paths
from hutch.sdk.transport import request_blocking
from tests.helpers import hutch_cli, kill_daemon, reset_client, wait_for


def _runtime() -> Path:
    return Path(os.environ["HUTCH_RUNTIME_DIR"])




def test_socket_is_private(engine: dict[str, Any]) -> None:
    mode = os.stat(paths.socket_path()).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


def _raw(request: bytes) -> bytes:
    """Send raw bytes to the engine's socket; everything it answers until it closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(paths.socket_path()))
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_malformed_http_is_answered_and_the_engine_serves_on(engine: dict[str, Any]) -> None:
    daemon = request_blocking("GET", "/v1/engine")["pid"]  # (earlier tests restart it)
    for request, status in [(b"GARBAGE\r\n\r\n", b"400"),
                            (b"GET /v1/health HTTP/1.1\r\nX: " + b"a" * 70_000, b"431"),
                            (b"POST /v1/sandboxes HTTP/1.1\r\nContent-Length: 2\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n{}", b"400"),
                            (b"GET /v1/health HTTP/2.0\r\n\r\n", b"505")]:
        answer = _raw(request)  # returns: the engine closed the connection after answering
        assert answer.split(b" ")[1] == status, answer[:200]
    # a well-formed HTTP/1.0 request still gets its answer, then the connection closes
    answer = _raw(b"GET /v1/health HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and json.loads(answer.split(b"\r\n\r\n")[1])[
        "status"] == "ok"
    assert request_blocking("GET", "/v1/engine")["pid"] == daemon  # the same daemon


def test_openapi_description(engine: dict[str, Any]) -> None:
    doc = request_blocking("GET", "/openapi.json")
    assert doc["openapi"].startswith("3.")
    assert "/v1/sandboxes" in doc["paths"] and "/v1/sandboxes/{sandbox_id}/execs" in doc["paths"]


def test_sigkilled_daemon_restarts_and_keeps_sandboxes(engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create(name="survivor", tags={"k": "v"}, timeout=120)
    assert sb.exec("sh", "-c", "echo before > /tmp/state").wait() == 0
    old = kill_daemon()
    # The next call starts a new daemon, which adopts the running sandbox.
    again = hutch.Sandbox.from_name("default", "survivor")
    assert request_blocking("GET", "/v1/engine")["pid"] != old
    assert again.object_id == sb.object_id
    assert again.info()["state"] == "running"
    assert again.get_tags() == {"k": "v"}
    assert sb.object_id in {s.object_id for s in hutch.Sandbox.list(tags={"k": "v"})}
    p = again.exec("cat", "/tmp/state")
    assert p.stdout.read() == "before\n"
    again.terminate()
    assert again.returncode == 137


def test_a_call_right_after_the_daemon_is_killed_starts_a_new_one(
        engine: dict[str, Any]) -> None:
    """No wait between the kill and the call: the pause process may not have reaped the
    dead daemon yet when the SDK asks it for a new one (once taken for still running)."""
    for _ in range(5):
        old = request_blocking("GET", "/v1/engine")["pid"]
        os.kill(old, signal.SIGKILL)
        reset_client()
        new = request_blocking("GET", "/v1/engine")["pid"]
        assert new != old


def test_entrypoint_stdin_is_reopened_by_a_new_daemon(engine: dict[str, Any]) -> None:
    """An entrypoint that reads stdin only after the restart gets what a client writes then;
    after write_eof a new daemon does not reopen it."""
    sb = hutch.Sandbox.create("sh", "-c", "mkfifo /tmp/go; read go < /tmp/go; cat",
                              timeout=120)
    try:
        kill_daemon()
        again = hutch.Sandbox.from_id(sb.object_id)
        again.stdin.write(b"after restart\n")
        again.stdin.write_eof()
        again.stdin.drain()
        # Let the entrypoint go on to `cat` once its FIFO exists (it makes it itself).
        go = again.exec("sh", "-c", "until [ -p /tmp/go ]; do sleep 0.01; done; echo > /tmp/go",
                        timeout=30)
        assert go.wait() == 0
        again.wait()
        assert again.returncode == 0
        assert again.stdout.read() == "after restart\n"
    finally:
        sb.terminate()


def test_sandbox_that_ended_while_the_daemon_was_down_is_reaped(engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create("sh", "-c", "mkfifo -m 666 /tmp/go; read line < /tmp/go; exit 5",
                              timeout=120)
    data_dir = Path(engine["data_dir"])
    pid = int((data_dir / "sandboxes" / sb.object_id / "init.pid").read_text())
    fifo = Path(f"/proc/{pid}/root/tmp/go")
    wait_for(fifo.exists, what="the entrypoint's fifo")
    kill_daemon()
    # With no daemon running, let the entrypoint finish: the pause process reaps it.
    fifo.write_text("go\n")
    record = wait_for(lambda: (_runtime() / "exits" / str(pid)).exists(),
                      what="the pause process to record the exit")
    assert record
    assert json.loads((_runtime() / "exits" / str(pid)).read_text())["code"] == 5
    info = hutch.Sandbox.from_id(sb.object_id).info()  # starts a daemon, which reaps it
    assert info["state"] == "exited"
    assert info["returncode"] == 5
    assert not (data_dir / "sandboxes" / sb.object_id / "upper").exists()


def test_engine_cli_status_stop_start(engine: dict[str, Any]) -> None:
    status = hutch_cli("engine", "status")
    assert status.returncode == 0 and b"runtime:" in status.stdout
    sb = hutch.Sandbox.create(timeout=60)
    assert hutch_cli("engine", "stop").returncode == 0
    reset_client()
    assert hutch_cli("engine", "status").returncode == 3
    started = hutch_cli("engine", "start")
    assert started.returncode == 0, started.stderr
    # Stopping the engine terminated its sandboxes.
    assert hutch.Sandbox.from_id(sb.object_id).info()["exit_reason"] == "terminated"


def test_a_pty_sandboxs_terminal_outlives_a_killed_daemon(engine: dict[str, Any]) -> None:
    """Its terminal is held by a relay of its own, not by the daemon: a daemon killed with
    SIGKILL hangs nothing up, what the sandbox prints meanwhile is kept, and the next
    daemon types into it and resizes it."""
    sb = hutch.Sandbox.create("python3", "-i", pty=True, timeout=120)
    try:
        sb.stdin.write(b"import signal, os, time\n"
                       b"signal.signal(signal.SIGWINCH, lambda *_: print("
                       b"'resized', *os.get_terminal_size(0), flush=True))\n"
                       b"hung = []; signal.signal(signal.SIGHUP, lambda *_: hung.append(1))\n"
                       b"print('before', 'kill')\n")
        sb.stdin.drain()
        lines = iter(sb.stdout)
        next(line for line in lines if line.startswith("before kill"))
        sb.stdin.write(b"time.sleep(1); print('while', 'down')\n")  # printed with no daemon
        sb.stdin.drain()
        kill_daemon()
        again = hutch.Sandbox.from_id(sb.object_id)
        again.resize_terminal(50, 150)
        again.stdin.write(b"print('after', 'restart', hung)\n")
        again.stdin.drain()
        seen = []
        for line in again.stdout:  # (from the start: a new handle reads the whole log)
            seen.append(line)
            if line.startswith("after restart"):
                break
        assert "while down\r\n" in seen, seen
        # (a daemon back after the sleep ended resizes at the prompt: ">>> resized 150 50")
        assert any(line.endswith("resized 150 50\r\n") for line in seen), seen
        assert seen[-1].startswith("after restart []"), seen  # no SIGHUP came
    finally:
        sb.terminate(grace_period=0)
