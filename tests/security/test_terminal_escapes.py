"""Sandbox output cannot drive the user's terminal through ``hutch exec``/``hutch run``.

Escape sequences in a command's output act on the terminal that shows them: OSC 52 writes
the clipboard (a command pasted later runs on the host), OSC 0 sets the window title, CSI
sequences clear or rewrite the screen to hide what ran.  The CLI used to copy sandbox output
raw.  Now, on a terminal, it neutralises every control but ``\\n``, ``\\t``, ``\\r`` and SGR
colours (``ESC [ ... m``), as ``less -R`` does; through a pipe or into a file the bytes
pass unchanged; ``--raw`` passes them on a terminal too.

The CLI runs on a real pseudo-terminal here (``os.openpty``): what the test reads from its
master side is what a terminal emulator would have received.
"""

from __future__ import annotations

import errno
import os
import select
import subprocess
import sys
import time
from typing import Any

import hutch
from tests.helpers import hutch_cli

#: What the hostile command prints: a clipboard write, a title, colour, a screen clear
#: and the alternate screen, on stdout, and a title on stderr.
SCRIPT = (r"printf '\033]52;c;cm0gLXJmIH4K\007\033]0;pwned\007\033[31mred\033[0m ok\n"
          r"\033[2J\033[?1049h\033P+q\033\\end\n'; printf '\033]0;err-title\007e\n' >&2")
#: The same bytes, as the pipe must carry them.
RAW_OUT = (b"\x1b]52;c;cm0gLXJmIH4K\x07\x1b]0;pwned\x07\x1b[31mred\x1b[0m ok\n"
           b"\x1b[2J\x1b[?1049h\x1bP+q\x1b\\end\n")
RAW_ERR = b"\x1b]0;err-title\x07e\n"
DEADLINE = 60.0


def _on_a_terminal(*args: str) -> tuple[int, bytes]:
    """Run ``hutch ARGS`` with stdin, stdout and stderr on a new pseudo-terminal; returns
    its exit code and everything the terminal received."""
    return _program_on_a_terminal([sys.executable, "-m", "hutch", *args])


def _program_on_a_terminal(argv: list[str]) -> tuple[int, bytes]:
    master, slave = os.openpty()
    proc = subprocess.Popen(argv, stdin=slave,
                            stdout=slave, stderr=slave, env=os.environ.copy(),
                            start_new_session=True)
    os.close(slave)
    received = bytearray()
    deadline = time.monotonic() + DEADLINE
    try:
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"{argv} did not end; it printed {bytes(received)!r}"
            ready, _, _ = select.select([master], [], [], left)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError as exc:  # EIO: every holder of the terminal's slave side left
                if exc.errno != errno.EIO:
                    raise
                break
            if not data:
                break
            received += data
        return proc.wait(timeout=DEADLINE), bytes(received)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _assert_neutralised(screen: bytes) -> None:
    # no escape reaches the terminal but the SGR colours
    assert screen.replace(b"\x1b[31m", b"").replace(b"\x1b[0m", b"").count(b"\x1b") == 0, screen
    assert b"\x07" not in screen
    assert b"\x1b[31mred\x1b[0m ok" in screen  # colours are kept
    # the rest is shown, visibly and inert
    assert b"^[]52;c;cm0gLXJmIH4K^G" in screen
    assert b"^[]0;pwned^G" in screen
    assert b"^[[2J^[[?1049h^[P+q^[\\end" in screen
    assert b"^[]0;err-title^Ge" in screen


def test_exec_on_a_terminal_neutralises_escapes(sandbox: hutch.Sandbox) -> None:
    code, screen = _on_a_terminal("exec", sandbox.object_id, "--", "sh", "-c", SCRIPT)
    assert code == 0, screen
    _assert_neutralised(screen)


def test_run_on_a_terminal_neutralises_escapes(engine: dict[str, Any]) -> None:
    code, screen = _on_a_terminal("run", "--", "sh", "-c", SCRIPT)
    assert code == 0, screen
    _assert_neutralised(screen)


def test_raw_passes_escapes_to_a_terminal(sandbox: hutch.Sandbox) -> None:
    code, screen = _on_a_terminal("exec", "--raw", sandbox.object_id, "--", "sh", "-c", SCRIPT)
    assert code == 0, screen
    # the terminal's own line discipline turns \n into \r\n; nothing else changed
    assert RAW_OUT.replace(b"\n", b"\r\n") in screen
    assert RAW_ERR.replace(b"\n", b"\r\n") in screen


def test_pipes_carry_the_bytes_unchanged(sandbox: hutch.Sandbox) -> None:
    ex = hutch_cli("exec", sandbox.object_id, "--", "sh", "-c", SCRIPT)
    assert (ex.returncode, ex.stdout, ex.stderr) == (0, RAW_OUT, RAW_ERR)
    run = hutch_cli("run", "--", "sh", "-c", SCRIPT)
    assert (run.returncode, run.stdout, run.stderr) == (0, RAW_OUT, RAW_ERR)


def test_logs_on_a_terminal_neutralise_escapes(engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create("sh", "-c", SCRIPT, timeout=60)
    sb.wait()
    code, screen = _on_a_terminal("logs", sb.object_id)
    assert code == 0, screen
    _assert_neutralised(screen)
    logs = hutch_cli("logs", sb.object_id)
    assert (logs.returncode, logs.stdout, logs.stderr) == (0, RAW_OUT, RAW_ERR)


#: A program of the user's that shows a sandbox's output on its own terminal, as Modal's
#: ``StreamType.STDOUT`` does.
SDK_FORWARD = """
import sys, hutch
from hutch.stream_type import StreamType
sb = hutch.Sandbox.from_id(sys.argv[1])
p = sb.exec("sh", "-c", sys.argv[2], stdout=StreamType.STDOUT, stderr=StreamType.STDOUT)
sys.exit(p.wait())
"""


def test_sdk_forwarding_to_a_terminal_neutralises_escapes(sandbox: hutch.Sandbox) -> None:
    code, screen = _program_on_a_terminal(
        [sys.executable, "-c", SDK_FORWARD, sandbox.object_id, SCRIPT])
    assert code == 0, screen
    _assert_neutralised(screen)


#: An image build whose step prints the hostile bytes (a package's install script could),
#: shown under ``enable_output`` on the user's terminal.
SDK_BUILD = """
import sys, hutch
with hutch.enable_output():
    hutch.Image.debian_slim().run_commands(sys.argv[1]).build()
"""


def test_build_output_on_a_terminal_neutralises_escapes(engine: dict[str, Any]) -> None:
    unique = f"{SCRIPT}; echo {time.time_ns()}"  # a step no cache holds
    code, screen = _program_on_a_terminal([sys.executable, "-c", SDK_BUILD, unique])
    assert code == 0, screen
    assert b"\x1b]52" not in screen and b"\x1b]0;" not in screen, screen
    assert b"^[]52;c;cm0gLXJmIH4K^G" in screen, screen
