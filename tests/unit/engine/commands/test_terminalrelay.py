"""The relay of a ``pty=True`` sandbox's terminal, on a terminal of the host's devpts."""

from __future__ import annotations

import os
import select
import threading
import time
import tty
from pathlib import Path

from hutch.engine.commands import terminalrelay, terminals


def _read(fd: int, size: int, deadline: float = 10.0) -> bytes:
    data, end = b"", time.monotonic() + deadline
    while len(data) < size:
        ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
        assert ready, f"only {data!r}"
        data += os.read(fd, size - len(data))
    return data


def test_input_output_sizes_and_the_end(tmp_path: Path) -> None:
    master, peer = terminals.open_pty(24, 80)
    os.set_blocking(master, True)
    stdin_fifo, control_fifo = tmp_path / "stdin", tmp_path / "ctl"
    os.mkfifo(stdin_fifo)
    os.mkfifo(control_fifo)
    flags = os.O_RDWR | os.O_NONBLOCK
    stdin, control = os.open(stdin_fifo, flags), os.open(control_fifo, flags)
    log = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    relay = threading.Thread(target=terminalrelay.relay, args=(master, stdin, control, log))
    relay.start()
    try:
        tty.setraw(peer)
        writer = os.open(stdin_fifo, os.O_WRONLY)
        os.write(writer, b"typed\x03bytes")  # raw: ^C is a byte like any other
        assert _read(peer, 11) == b"typed\x03bytes"
        os.write(peer, b"printed")
        end = time.monotonic() + 10
        while (tmp_path / "log").read_bytes() != b"printed":
            assert time.monotonic() < end, (tmp_path / "log").read_bytes()
            select.select([], [], [], 0.01)
        ctl = os.open(control_fifo, os.O_WRONLY)
        os.write(ctl, b"nonsense\n12 34\n")
        end = time.monotonic() + 10
        while terminals.get_size(peer) != (12, 34):
            assert time.monotonic() < end
            select.select([], [], [], 0.01)
        os.close(ctl)
        os.close(writer)
    finally:
        os.close(peer)  # the terminal's other end is gone: the relay ends
        relay.join(10)
    assert not relay.is_alive()
    for fd in (master, stdin, control, log):
        os.close(fd)
