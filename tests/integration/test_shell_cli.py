"""``hutch shell`` and ``hutch run -it`` in a real terminal: the CLI runs on a pseudo-terminal
made by ``pexpect``, and what it prints is drawn by ``pyte`` (a VT100/xterm emulator), so each
test checks what a user would see on the screen: a shell's output, a REPL that survives
Ctrl-C, ``top`` and ``vim`` drawing full screen, and sizes that follow the window."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import pexpect
import pyte
import pytest

import hutch

#: Seconds a screen has to show what a test waits for (a new sandbox included).
DEADLINE = 60.0


class _Screen(pyte.Screen):  # type: ignore[misc]
    """pyte's screen, taking the private SGR form vim sends (``CSI > 4 ; 2 m``, xterm's
    modifyOtherKeys), which pyte 0.8 passes on with a keyword its screen lacks."""

    def select_graphic_rendition(self, *attrs: int, private: bool = False) -> None:
        if not private:
            super().select_graphic_rendition(*attrs)


class Terminal:
    """``hutch ARGS`` on a terminal of ``rows`` x ``cols``, and the screen it draws."""

    def __init__(self, *args: str, rows: int = 24, cols: int = 80) -> None:
        self.screen = _Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.child = pexpect.spawn(sys.executable, ["-m", "hutch", *args],
                                   env={**os.environ, "TERM": "xterm"}, dimensions=(rows, cols))

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def wait_for(self, wanted: str, deadline: float = DEADLINE) -> None:
        end = time.monotonic() + deadline
        while wanted not in self.text():
            remaining = end - time.monotonic()
            assert remaining > 0, f"no {wanted!r} on the screen:\n{self.text()}"
            try:
                self.stream.feed(self.child.read_nonblocking(65536, timeout=remaining))
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                raise AssertionError(f"ended without {wanted!r}:\n{self.text()}") from None

    def type(self, keys: str) -> None:
        self.child.send(keys)

    def resize(self, rows: int, cols: int) -> None:
        self.screen.resize(rows, cols)
        self.child.setwinsize(rows, cols)  # the kernel sends the CLI SIGWINCH

    def exit_code(self, deadline: float = DEADLINE) -> int:
        end = time.monotonic() + deadline
        while self.child.isalive():
            assert time.monotonic() < end, f"still running:\n{self.text()}"
            try:
                self.stream.feed(self.child.read_nonblocking(65536, timeout=1))
            except (pexpect.TIMEOUT, pexpect.EOF):
                pass
        self.child.close()
        code: int = self.child.exitstatus
        return code


@pytest.fixture
def target(engine: dict[str, Any]) -> Iterator[hutch.Sandbox]:
    sb = hutch.Sandbox.create(timeout=300)
    yield sb
    sb.terminate(grace_period=0)


def test_shell_without_a_sandbox_makes_one_and_removes_it(engine: dict[str, Any]) -> None:
    term = Terminal("shell")
    term.type("echo $((6*7)) on $(hostname); tty\r")
    term.wait_for("/dev/pts/")
    line = next(row for row in term.text().splitlines() if row.startswith("42 on "))
    sandbox_id = line.removeprefix("42 on ").strip()
    term.type("exit 3\r")
    assert term.exit_code() == 3
    assert hutch.Sandbox.from_id(sandbox_id).poll() is not None  # gone with the shell


def test_a_shell_on_a_private_network_finds_its_peers(engine: dict[str, Any]) -> None:
    with hutch.Network.ephemeral() as net:
        peer = hutch.Sandbox.create(network=net, network_aliases=["peer"], timeout=120)
        try:
            term = Terminal("shell", "--network", net.name, "--network-alias", "me")
            term.type("getent hosts peer me | wc -l\r")
            term.wait_for("\n2\n")
            term.type("exit\r")
            assert term.exit_code() == 0
        finally:
            peer.terminate()
            peer.wait(raise_on_termination=False)


def test_a_python_repl_keeps_its_state_through_ctrl_c(target: hutch.Sandbox) -> None:
    term = Terminal("shell", target.object_id, "--", "python3", "-i")
    term.wait_for(">>>")
    term.type("x = 6 * 7\r")
    term.type("import time; time.sleep(300)\r")
    term.wait_for("time.sleep(300)")
    term.type("\x03")  # Ctrl-C: SIGINT for the sandbox's foreground job, not for the CLI
    term.wait_for("KeyboardInterrupt")
    term.type("print('x is', x)\r")
    term.wait_for("x is 42")
    term.type("exit(5)\r")
    assert term.exit_code() == 5


def test_the_size_follows_the_window(target: hutch.Sandbox) -> None:
    term = Terminal("shell", target.object_id, rows=30, cols=100)
    term.type("stty size\r")
    term.wait_for("30 100")
    term.resize(40, 120)
    term.type("clear; stty size\r")
    term.wait_for("40 120")
    term.type("exit\r")
    assert term.exit_code() == 0


def test_top_draws_the_whole_screen_and_quits_on_a_key(target: hutch.Sandbox) -> None:
    term = Terminal("shell", target.object_id, "--", "top", "-d", "1")
    term.wait_for("PID USER")
    assert term.text().splitlines()[0].startswith("top - ")  # drawn from the top row
    term.type("q")
    assert term.exit_code() == 0


def test_vim_edits_a_file(engine: dict[str, Any]) -> None:
    image = hutch.Image.debian_slim().apt_install("vim-tiny")
    sb = hutch.Sandbox.create(image=image, timeout=300)
    try:
        term = Terminal("shell", sb.object_id, "--", "vim.tiny", "/tmp/note.txt")
        term.wait_for('"/tmp/note.txt"')
        assert term.text().splitlines()[1].startswith("~")  # vim's marks for no lines
        term.type("ihello from vim\x1b:wq\r")
        assert term.exit_code() == 0
        assert sb.exec("cat", "/tmp/note.txt").stdout.read() == "hello from vim\n"
    finally:
        sb.terminate(grace_period=0)


def test_run_it_passes_the_exit_code(engine: dict[str, Any]) -> None:
    term = Terminal("run", "-it", "--", "sh")
    term.type("test -t 0 && echo on-a-terminal\r")
    term.wait_for("on-a-terminal")
    term.type("exit 4\r")
    assert term.exit_code() == 4


def test_exec_as_a_user_from_the_cli(target: hutch.Sandbox) -> None:
    term = Terminal("exec", "-it", "-u", "nobody", target.object_id, "--", "sh")
    term.type("id -un\r")
    term.wait_for("nobody")
    term.type("exit\r")
    assert term.exit_code() == 0
