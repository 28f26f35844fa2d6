"""The terminal of a sandbox created with ``pty=True``: the runtime's console socket, the
relay that holds the terminal (:mod:`hutch.engine.commands.terminalrelay`), and its size.

The runtime (``crun create --console-socket``) makes the terminal in the container and
sends its master over a Unix socket in the sandbox's directory; the engine starts the
relay with it and lets its own copy go, so the terminal lives as long as the sandbox
does, whatever happens to the daemon.  The socket and the control FIFO are in the
sandbox's directory, which nothing in the sandbox reaches.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
from pathlib import Path

import trio

from hutch.engine.commands import forkserver, terminalrelay
from hutch.engine.errors import Conflict, EngineError

#: Seconds the runtime has to send the terminal once it has created the container.
RECEIVE_TIMEOUT = 10.0
CONSOLE_SOCKET = "console.sock"
CONTROL_FIFO = "terminal.ctl"


class ConsoleSocket:
    """Where the runtime sends the master of the container's terminal."""

    def __init__(self, root: Path) -> None:
        self.path = root / CONSOLE_SOCKET
        self.path.unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.bind(str(self.path))
            os.chmod(self.path, 0o600)
            self._sock.listen(1)
        except BaseException:
            self.close()
            raise

    async def receive(self) -> int:
        """The master the runtime sent (it connects during ``create``, which has returned)."""
        listener = trio.socket.from_stdlib_socket(self._sock)
        with trio.move_on_after(RECEIVE_TIMEOUT):
            conn, _ = await listener.accept()
            with conn:
                _, ancdata, _, _ = await conn.recvmsg(4096, socket.CMSG_LEN(4 * 4),
                                                      socket.MSG_CMSG_CLOEXEC)
            fds = forkserver.unpack_fds(ancdata)
            if fds:
                for extra in fds[1:]:
                    os.close(extra)
                return fds[0]
        raise EngineError("the runtime sent no terminal for the sandbox")

    def close(self) -> None:
        self._sock.close()
        self.path.unlink(missing_ok=True)


def start_relay(master: int, root: Path, stdin_fifo: Path, log: int) -> None:
    """Start the relay holding ``master`` (the caller closes its own copy); it detaches at
    once (its first process exits, reaped here)."""
    control = root / CONTROL_FIFO
    control.unlink(missing_ok=True)
    os.mkfifo(control, 0o600)
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        pid = os.posix_spawn(
            sys.executable, [sys.executable, "-I", "-S", terminalrelay.__file__,
                             str(stdin_fifo), str(control)],
            {"PATH": os.environ.get("PATH", forkserver.DEFAULT_PATH)},
            file_actions=[(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1),
                          (os.POSIX_SPAWN_DUP2, null, 2),
                          (os.POSIX_SPAWN_DUP2, master, terminalrelay.MASTER),
                          (os.POSIX_SPAWN_DUP2, log, terminalrelay.LOG)])
    finally:
        os.close(null)
    _, status = os.waitpid(pid, 0)  # (it forks and exits: milliseconds)
    if os.waitstatus_to_exitcode(status) != 0:
        raise EngineError("the sandbox's terminal relay could not start")


def resize(root: Path, rows: int, cols: int) -> None:
    """Set the size of the sandbox's terminal; Conflict when it has none (any more)."""
    try:
        fd = os.open(root / CONTROL_FIFO, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Conflict("this sandbox has no terminal (create it with pty=True)") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no reader: the relay has ended with the terminal
            raise Conflict("the sandbox's terminal has closed") from None
        raise
    try:
        with contextlib.suppress(BlockingIOError):  # a full FIFO: sizes are still pending
            os.write(fd, f"{rows} {cols}\n".encode())
    finally:
        os.close(fd)
