"""exec in a running sandbox: streaming, exit codes, signals, stdin, env, workdir, timeouts."""

from __future__ import annotations

import time
from pathlib import Path

import hutch


def test_exec_output_and_code(sandbox: hutch.Sandbox) -> None:
    p = sandbox.exec("sh", "-c", "echo to-out; echo to-err >&2; exit 5")
    assert p.stdout.read() == "to-out\n"
    assert p.stderr.read() == "to-err\n"
    assert p.wait() == 5
    assert p.returncode == 5


def test_signal_exit_is_128_plus_n(sandbox: hutch.Sandbox) -> None:
    assert sandbox.exec("sh", "-c", "kill -KILL $$").wait() == 137
    assert sandbox.exec("sh", "-c", "kill -TERM $$").wait() == 143


def test_a_line_arrives_before_the_command_ends(sandbox: hutch.Sandbox) -> None:
    p = sandbox.exec("sh", "-c", "echo first; exec sleep 300", timeout=60)
    lines = iter(p.stdout)
    assert next(lines) == "first\n"
    assert p.poll() is None  # still running: the line was streamed, not buffered to the end
    sandbox.exec("pkill", "-x", "sleep").wait()
    assert p.wait() == 143


def test_exec_env_and_workdir(sandbox: hutch.Sandbox) -> None:
    p = sandbox.exec("sh", "-c", 'echo "$A:$(pwd)"', env={"A": "b"}, workdir="/tmp")
    assert p.stdout.read() == "b:/tmp\n"


def test_stdin(sandbox: hutch.Sandbox) -> None:
    p = sandbox.exec("sh", "-c", "tr a-z A-Z; echo done")
    p.stdin.write("hello ")
    p.stdin.write(b"world\n")
    p.stdin.drain()
    p.stdin.write_eof()
    p.stdin.drain()
    assert p.stdout.read() == "HELLO WORLD\ndone\n"
    assert p.wait() == 0


def test_exec_timeout_kills_grandchildren(sandbox: hutch.Sandbox) -> None:
    p = sandbox.exec(
        "sh", "-c",
        "sleep 1001 & (setsid sleep 1002 &) ; echo started; sleep 1003",
        timeout=1,
    )
    assert next(iter(p.stdout)) == "started\n"
    assert p.wait() == -1  # Modal's return code for an exec stopped by its timeout
    survivors = sandbox.exec("sh", "-c", "ps -eo args | grep -E '^sleep 100[123]' || true")
    assert survivors.stdout.read() == ""


def test_many_execs_keep_order_and_codes(sandbox: hutch.Sandbox) -> None:
    procs = [sandbox.exec("sh", "-c", f"echo {i}; exit {i % 4}") for i in range(20)]
    for i, p in enumerate(procs):
        assert p.stdout.read() == f"{i}\n"
        assert p.wait() == i % 4


def test_large_output_is_complete(sandbox: hutch.Sandbox) -> None:
    p = sandbox.exec("python3", "-c", "import sys; sys.stdout.write('x' * (8 << 20))",
                     text=False)
    data = p.stdout.read()
    assert len(data) == 8 << 20 and set(data) == {ord("x")}
    assert p.wait() == 0


def test_exec_round_trip_is_fast_enough_to_be_interactive(sandbox: hutch.Sandbox) -> None:
    # Not a speed target (those live in benchmarks/): a sanity bound that catches a hang.
    start = time.monotonic()
    assert sandbox.exec("true").wait() == 0
    assert time.monotonic() - start < 5


def test_engine_memory_stays_bounded_while_streaming(
        sandbox: hutch.Sandbox, engine: dict[str, object]) -> None:
    size = 400 << 20
    p = sandbox.exec("head", "-c", str(size), "/dev/zero", text=False)
    total = sum(len(chunk) for chunk in p.stdout)
    assert total == size
    assert p.wait() == 0
    from hutch.sdk.transport import request_blocking

    pid = request_blocking("GET", "/v1/engine")["pid"]
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    status = dict(line.split(":", 1) for line in lines)
    peak_kib = int(status["VmHWM"].split()[0])
    assert peak_kib < 200 * 1024, f"engine peak RSS {peak_kib} KiB after streaming {size} bytes"
