"""The relay of a sandbox created with ``pty=True``: between the master end of its
entrypoint's terminal and the files the engine keeps for every sandbox.

Why a process of its own (run by path, standard library only, about 9 MiB): the runtime
hands the terminal's master to the engine (``--console-socket``), and whoever holds it
holds the terminal: if that were the daemon, a daemon killed or restarted would hang the
sandbox's terminal up (SIGHUP to its programs) and lose what they print meanwhile.  The
relay detaches at once (its parent exits, the engine's pause process adopts and reaps it),
so it outlives the daemon, and the daemon talks to it through files that outlive both:

* the sandbox's stdin FIFO (as for any sandbox): its bytes go to the terminal; the relay
  holds the FIFO open read-write, so a daemon's end never reads as EOF here (end of input
  on a terminal is ^D, which the daemon writes);
* a control FIFO: lines ``ROWS COLS`` set the terminal's size (its programs get SIGWINCH);
* the stdout log on the logs tmpfs (fd 4): the terminal's output, as the entrypoint's
  stdout is for other sandboxes (past the log's cap it is read and dropped, so the
  sandbox's programs never block on a full terminal).

It ends when the terminal has no other end left (EIO: every process of the sandbox has
ended).  Usage: ``terminalrelay.py STDIN_FIFO CONTROL_FIFO`` with the master as fd 3.
"""

from __future__ import annotations

import errno
import fcntl
import os
import selectors
import struct
import sys
import termios

MASTER, LOG = 3, 4
#: Bytes of input held for the terminal at most while it takes none (the stdin FIFO waits).
PENDING_MAX = 1 << 16
#: Bytes of one control line at most.
CONTROL_MAX = 64


def _size(master: int, line: bytes) -> None:
    fields = line.split()
    if len(fields) == 2 and all(f.isdigit() for f in fields):
        rows, cols = (min(int(f), 4096) for f in fields)
        if rows and cols:
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def relay(master: int, stdin: int, control: int, log: int) -> None:
    """Copy until the terminal's other end is gone."""
    os.set_blocking(master, False)
    selector = selectors.DefaultSelector()
    selector.register(master, selectors.EVENT_READ, "out")
    selector.register(stdin, selectors.EVENT_READ, "in")
    selector.register(control, selectors.EVENT_READ, "control")
    pending, control_line, logging = b"", b"", True
    while True:
        for key, events in selector.select():
            if key.data == "out" and events & selectors.EVENT_READ:
                try:
                    data = os.read(master, 65536)
                except OSError as exc:
                    if exc.errno in (errno.EIO, errno.EBADF):
                        return
                    if exc.errno == errno.EAGAIN:
                        continue
                    raise
                if not data:
                    return
                if logging:
                    try:
                        os.write(log, data)
                    except OSError:
                        logging = False  # the log's cap (ENOSPC): the rest is dropped
            if key.data == "out" and events & selectors.EVENT_WRITE and pending:
                try:
                    pending = pending[os.write(master, pending):]
                except BlockingIOError:
                    pass
            elif key.data == "in":
                try:
                    pending += os.read(stdin, PENDING_MAX - len(pending))
                except BlockingIOError:
                    pass
            elif key.data == "control":
                try:
                    control_line = (control_line + os.read(control, 4096))[-CONTROL_MAX * 4:]
                except BlockingIOError:
                    continue
                *lines, control_line = control_line.split(b"\n")
                for line in lines:
                    _size(master, line[:CONTROL_MAX])
        # input waits in the FIFO while the terminal takes none
        selector.modify(master, selectors.EVENT_READ | (selectors.EVENT_WRITE if pending
                                                        else 0), "out")
        reading = stdin in selector.get_map()
        if len(pending) >= PENDING_MAX and reading:
            selector.unregister(stdin)
        elif len(pending) < PENDING_MAX and not reading:
            selector.register(stdin, selectors.EVENT_READ, "in")


def main(argv: list[str]) -> int:
    stdin_fifo, control_fifo = argv[1], argv[2]
    if os.fork() != 0:  # detached: the engine's pause process adopts and reaps the relay
        return 0
    os.setsid()
    flags = os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC
    stdin, control = os.open(stdin_fifo, flags), os.open(control_fifo, flags)
    relay(MASTER, stdin, control, LOG)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
