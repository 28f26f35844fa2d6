"""Reads and writes on the engine's non-blocking sockets and pipes that go through trio's
scheduler only when they would block.

Why: trio's streams and sockets pass every call through the scheduler at least once,
twice for a call that succeeds at once (a checkpoint before, a shielded one after), and an
``exec("true")`` makes about fifteen of them (the HTTP request and its answer, the zygote's
two frames, two pipes at their end): a profile of the engine under a stream of execs had
18.6 scheduler passes per exec, and the scheduler's own work was a third of the engine's
time per exec.  These functions try the system call first and wait for the descriptor
(``wait_readable``/``wait_writable``) only when it says ``EAGAIN``; a call that moved a
whole buffer's worth checks in with the scheduler afterwards, so a peer that always has
more to send or read cannot keep the engine's other tasks waiting.

Errors are a stream's: ``trio.BrokenResourceError`` for a peer gone (``EPIPE``,
``ECONNRESET``, ``EIO``) or any other failure, with the ``OSError`` as its cause.
"""

from __future__ import annotations

import functools
import os
import socket

import trio

#: Bytes moved by one call past which the caller yields to the scheduler before returning.
YIELD_AFTER = 65536


async def receive_some(fd: int, size: int) -> bytes:
    """Up to ``size`` bytes from ``fd`` (``b""`` at its end)."""
    while True:
        try:
            data = os.read(fd, size)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(fd)
            continue
        except OSError as exc:
            raise trio.BrokenResourceError(f"reading fd {fd}: {exc}") from exc
        if len(data) >= YIELD_AFTER:
            await trio.lowlevel.checkpoint()
        return data


async def send_all(target: int | socket.socket, data: bytes | bytearray | memoryview) -> None:
    """All of ``data`` to ``target``: a descriptor only its caller may close (an exec's
    pipe, the connection a task serves), or a socket object, which another task may close
    meanwhile: its ``send`` then fails with ``EBADF`` instead of writing to whatever file
    took the number."""
    write = target.send if isinstance(target, socket.socket) \
        else functools.partial(os.write, target)
    with memoryview(data) as view:
        left = view
        while left:
            try:
                sent = write(left)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(target)
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"writing: {exc}") from exc
            left = left[sent:]
        if len(view) >= YIELD_AFTER:
            await trio.lowlevel.checkpoint()


async def receive_message(sock: socket.socket, size: int, ancillary: int,
                          flags: int = 0) -> tuple[bytes, list[tuple[int, int, bytes]]]:
    """``sock.recvmsg(size, ancillary, flags)`` (data and ancillary data) on a
    non-blocking socket."""
    while True:
        try:
            data, ancdata, _, _ = sock.recvmsg(size, ancillary, flags)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            continue
        except OSError as exc:
            raise trio.BrokenResourceError(f"receiving: {exc}") from exc
        return data, ancdata


def close(sock: socket.socket) -> None:
    """Close ``sock``, waking whatever task waits on it (``ClosedResourceError``) as trio's
    own sockets do; outside trio it is only closed."""
    try:
        trio.lowlevel.notify_closing(sock)
    except RuntimeError:  # (not in trio: nothing can be waiting)
        pass
    sock.close()
