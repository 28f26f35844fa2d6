"""exec on a pseudo-terminal (``pty=True``): a terminal of the sandbox's own, with job
control, Ctrl-C as a signal, raw bytes both ways and a size that can change; and
``exec(user=...)``.  Programs are driven by what they print, with deadlines."""

from __future__ import annotations

import queue
import re
import threading
import time
from typing import Any

import hutch

#: Seconds a program on the terminal has to show what a test waits for.
DEADLINE = 30.0
SIZE_PROGRAM = (
    "import os, signal, sys\n"
    "signal.signal(signal.SIGWINCH, lambda *_: print('size', *os.get_terminal_size(0),"
    " flush=True))\n"
    "print('ready', *os.get_terminal_size(0), flush=True)\n"
    "sys.stdin.readline()\n"
)


class Screen:
    """What a terminal exec has printed so far, read as it comes."""

    def __init__(self, process: hutch.ContainerProcess[Any]) -> None:
        self.chunks: queue.Queue[tuple[int, bytes] | None] = queue.Queue()
        self.seen = b""
        threading.Thread(target=self._read, args=(process,), daemon=True).start()

    def _read(self, process: hutch.ContainerProcess[Any]) -> None:
        try:
            for event in process.events():
                self.chunks.put(event)
        finally:
            self.chunks.put(None)

    def expect(self, pattern: bytes, deadline: float = DEADLINE) -> re.Match[bytes]:
        end = time.monotonic() + deadline
        while (found := re.search(pattern, self.seen)) is None:
            try:
                event = self.chunks.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {pattern!r} in {self.seen[-2000:]!r}") from None
            assert event is not None, f"ended without {pattern!r}: {self.seen[-2000:]!r}"
            assert event[0] == 1  # a terminal has one output
            self.seen += event[1]
        self.seen = self.seen[found.end():]
        return found


def test_a_pty_exec_runs_on_a_terminal_of_the_sandbox(sandbox: hutch.Sandbox) -> None:
    p = sandbox.exec("sh", "-c", 'test -t 0 && test -t 1 && test -t 2 && tty && echo "$TERM"; '
                     "ls -l /proc/self/fd/0", pty=True, text=False)
    out = p.stdout.read()
    assert p.wait() == 0, out
    assert re.search(rb"^/dev/pts/\d+\r\nxterm-256color\r\n", out), out  # ONLCR: \r\n
    assert b"-> /dev/pts/" in out


def test_the_size_is_set_at_start_and_changes_with_sigwinch(sandbox: hutch.Sandbox) -> None:
    p = sandbox.exec("python3", "-c", SIZE_PROGRAM, pty_info={"winsz_rows": 33,
                                                              "winsz_cols": 111})
    screen = Screen(p)
    screen.expect(rb"ready 111 33")  # (os.get_terminal_size gives columns first)
    p.resize(50, 160)
    screen.expect(rb"size 160 50")
    p.stdin.write(b"\n")
    p.stdin.drain()
    assert p.wait() == 0


def test_ctrl_c_is_a_signal_to_the_foreground_job(sandbox: hutch.Sandbox) -> None:
    p = sandbox.exec("python3", "-c", "import time\ntry:\n print('ready', flush=True)\n"
                     " time.sleep(120)\nexcept KeyboardInterrupt:\n print('interrupted')\n",
                     pty=True, timeout=60)
    screen = Screen(p)
    screen.expect(rb"ready")
    p.stdin.write(b"\x03")
    p.stdin.drain()
    screen.expect(rb"interrupted")
    assert p.wait() == 0


def test_job_control_in_an_interactive_shell(sandbox: hutch.Sandbox) -> None:
    p = sandbox.exec("bash", "--norc", "-i", pty=True, timeout=60, env={"PS1": "$ "})
    screen = Screen(p)
    screen.expect(rb"\$ ")
    p.stdin.write(b"sh -c 'echo started; exec sleep 300'\n")
    p.stdin.drain()
    screen.expect(rb"[\r\n]started\r\n")  # (after the echo of the line typed)
    p.stdin.write(b"\x1a")  # Ctrl-Z: the job stops, the shell comes back
    p.stdin.drain()
    screen.expect(rb"Stopped\s+sh -c 'echo started; exec sleep 300'")
    p.stdin.write(b"jobs -l\n")
    p.stdin.drain()
    pid = screen.expect(rb"\[1\]\+\s+(\d+) Stopped").group(1).decode()
    p.stdin.write(b"fg\n")  # the job goes on, in the foreground again
    p.stdin.drain()
    end = time.monotonic() + DEADLINE
    while "+" not in (stat := sandbox.exec("ps", "-o", "stat=", "-p", pid).stdout.read()) \
            or "T" in stat:  # ("+": in the terminal's foreground group; "T": stopped)
        assert time.monotonic() < end, f"the job did not come back to the foreground: {stat}"
    p.stdin.write(b"\x03")  # Ctrl-C: SIGINT for the job, the shell goes on
    p.stdin.drain()
    screen.expect(rb"\$ ")
    p.stdin.write(b"exit 7\n")
    p.stdin.drain()
    assert p.wait() == 7
    assert sandbox.exec("ps", "-p", pid).wait() == 1  # the job has ended


def test_raw_bytes_both_ways(sandbox: hutch.Sandbox) -> None:
    program = ("import sys, tty\ntty.setraw(0)\nprint('raw', flush=True)\n"
               "data = sys.stdin.buffer.read(5)\n"
               "sys.stdout.buffer.write(b'<' + data[::-1] + b'>'); sys.stdout.flush()\n")
    p = sandbox.exec("python3", "-c", program, pty=True, text=False)
    screen = Screen(p)
    screen.expect(rb"raw")
    p.stdin.write(b"\x00\x03\xff\x1b\n")  # NUL, ^C (no signal in raw mode), 0xff, ESC
    p.stdin.drain()
    screen.expect(re.escape(b"<\n\x1b\xff\x03\x00>"))
    assert p.wait() == 0


def test_end_of_input_on_a_terminal_is_ctrl_d(sandbox: hutch.Sandbox) -> None:
    p = sandbox.exec("cat", pty=True)
    p.stdin.write(b"one line\n")
    p.stdin.write_eof()
    p.stdin.drain()
    assert p.wait() == 0
    assert p.stdout.read().count("one line") == 2  # the terminal's echo, then cat's copy


def test_exec_as_a_user_of_the_image(sandbox: hutch.Sandbox) -> None:
    p = sandbox.exec("sh", "-c", 'id; echo "$HOME"; grep CapEff /proc/self/status; '
                     "touch /tmp/mine && stat -c %U:%G /tmp/mine; touch /root/no",
                     user="nobody")
    out, err = p.stdout.read(), p.stderr.read()
    assert p.wait() == 1
    assert out.splitlines()[0].startswith("uid=65534(nobody) gid=65534(nogroup)"), out
    assert out.splitlines()[1:] == ["/nonexistent", "CapEff:\t0000000000000000",
                                    "nobody:nogroup"], out
    assert "Permission denied" in err
    assert sandbox.exec("id", "-u", user=1000).stdout.read() == "1000\n"
    assert sandbox.exec("id", "-g", user=1000).stdout.read() == "0\n"  # as docker -u 1000
    assert sandbox.exec("id", "-gn", user="nobody:daemon").stdout.read() == "daemon\n"
    assert sandbox.exec("id", "-un", user="root").stdout.read() == "root\n"


def test_an_unknown_user_fails_the_command_as_docker_does(sandbox: hutch.Sandbox) -> None:
    p = sandbox.exec("true", user="nosuchuser")
    assert p.wait() == 126
    assert "unable to find user nosuchuser" in p.stderr.read()
    with_group = sandbox.exec("true", user="nobody:nosuchgroup")
    assert with_group.wait() == 126
    assert "unable to find group nosuchgroup" in with_group.stderr.read()
    # the sandbox's own ids are those its image needs (at least 0-1023) and nobody
    unmapped = sandbox.exec("true", user=50000)
    assert unmapped.wait() == 126
    assert "user id 50000 is not mapped in this sandbox" in unmapped.stderr.read()


def test_a_user_on_a_terminal_owns_it(sandbox: hutch.Sandbox) -> None:
    p = sandbox.exec("sh", "-c", "stat -c %U $(tty); id -un", pty=True, user="nobody")
    assert p.wait() == 0
    assert p.stdout.read().split() == ["nobody", "nobody"]


def test_a_sandbox_created_with_pty_runs_its_entrypoint_on_a_terminal(
        engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create("python3", "-i", "-c", SIZE_PROGRAM, pty_info={
        "winsz_rows": 20, "winsz_cols": 70}, timeout=120)
    try:
        lines = iter(sb.stdout)
        assert "ready 70 20" in next(line for line in lines if "ready" in line)
        sb.resize_terminal(44, 144)
        assert "size 144 44" in next(line for line in lines if "size" in line)
        sb.stdin.write(b"\n")  # readline returns: -i makes it a REPL then
        sb.stdin.write(b"import os; print(os.isatty(0), os.environ['TERM'], 6 * 7)\n")
        sb.stdin.drain()
        assert "True xterm-256color 42" in next(line for line in lines if "True" in line)
        sb.stdin.write(b"import time; print('sleeping', 'now'); time.sleep(300)\n")
        sb.stdin.drain()
        next(line for line in lines if line.startswith("sleeping now"))
        sb.stdin.write(b"\x03")  # Ctrl-C: its REPL goes on
        sb.stdin.drain()
        next(line for line in lines if "KeyboardInterrupt" in line)
        sb.stdin.write(b"print('after', 'interrupt')\n")
        sb.stdin.drain()
        assert "after interrupt" in next(line for line in lines if "after interrupt" in line
                                         and "print" not in line)
        sb.stdin.write_eof()  # ^D: the REPL ends, and the sandbox with it
        sb.stdin.drain()
        sb.wait(raise_on_termination=False)
        assert sb.returncode == 0
    finally:
        sb.terminate(grace_period=0)
