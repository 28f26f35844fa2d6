"""The frames the engine and its fork server and zygotes exchange (:mod:`.forkserver`'s
framing: a 4-byte length, then JSON), sent and read on non-blocking sockets.

Why: reading a frame's header, then its body, through trio's socket made three scheduler
passes per frame, and an exec has two frames (its pid, then its exit, which often arrive
together); one read now takes whatever the socket holds, without the scheduler unless it
has to wait (:mod:`hutch.engine.kernel.fdio`).
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections import deque
from typing import Any

import trio

from hutch.engine.commands import forkserver
from hutch.engine.kernel import fdio

#: Bytes one read of a zygote's socket takes at most (its frames are a few hundred bytes).
READ_SIZE = 65536
#: Seconds a frame may wait for room in its socket before its peer is given up.
SEND_TIMEOUT = 10.0


async def send_frame(sock: socket.socket, obj: dict[str, Any], fds: list[int] | None = None
                     ) -> None:
    """Send ``obj`` as one frame (with ``fds`` on its first part) on the non-blocking
    ``sock``, waiting through trio only while the socket is full: a fork server busy
    with one request (a namespace maker it waits for, up to five seconds) must not stop
    the engine's event loop when the requests queued behind it fill the socket.

    A frame goes whole or the peer is given up: the send is shielded from cancellation
    (half a frame would garble every later one) and limited to ``SEND_TIMEOUT`` seconds.
    Raises ``OSError`` or ``trio.BrokenResourceError`` when the peer is gone or stuck."""
    data = json.dumps(obj).encode()
    frame = forkserver.HEADER.pack(len(data)) + data
    with trio.CancelScope(shield=True), trio.move_on_after(SEND_TIMEOUT):
        sent = 0
        while fds:
            try:
                sent = sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                               struct.pack(f"{len(fds)}i", *fds))])
                break
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
        await fdio.send_all(sock, memoryview(frame)[sent:])
        return
    raise trio.BrokenResourceError(f"the peer took no frame for {SEND_TIMEOUT:.0f} s")


class FrameReader:
    """The frames of a zygote, or of a namespace maker, read in as few calls as they
    arrived in: each read takes what the socket holds (an exec's pid and exit frames
    often come together) instead of a frame's header, then its body.

    The descriptors a frame carries arrive with the read that reaches its first byte:
    every frame is sent in one ``sendmsg`` (``forkserver.send``), the descriptors on its
    first part,
    and Linux ends a read of a Unix stream socket right after the part that carried
    descriptors.  So they belong to the last frame that starts in that read's data."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        #: [offset in buffer of the frame's start, its descriptors]
        self.pending: deque[tuple[int, list[int]]] = deque()

    async def next(self) -> tuple[dict[str, Any] | None, list[int]]:
        """The next frame and its descriptors; ``(None, [])`` at the end."""
        while True:
            taken = self._take()
            if taken is not None:
                return taken
            start = len(self.buffer)
            data, ancdata = await fdio.receive_message(
                self.sock, READ_SIZE, socket.CMSG_LEN(forkserver.MAX_FDS * 4),
                socket.MSG_CMSG_CLOEXEC)
            fds = forkserver.unpack_fds(ancdata)
            if not data:
                _close(fds)
                return None, []
            self.buffer += data
            if fds:
                self._attach(start, fds)

    def _attach(self, start: int, fds: list[int]) -> None:
        last, offset = None, 0
        while offset + forkserver.HEADER.size <= len(self.buffer):
            if offset >= start:
                last = offset
            offset += forkserver.HEADER.size + forkserver.HEADER.unpack_from(self.buffer,
                                                                              offset)[0]
        if start <= offset < len(self.buffer):  # a frame whose header this read cut
            last = offset
        if last is None:  # not from a zygote speaking the protocol
            _close(fds)
            raise trio.BrokenResourceError("descriptors without a frame of theirs")
        self.pending.append((last, fds))

    def _take(self) -> tuple[dict[str, Any], list[int]] | None:
        if len(self.buffer) < forkserver.HEADER.size:
            return None
        end = forkserver.HEADER.size + forkserver.HEADER.unpack_from(self.buffer)[0]
        if len(self.buffer) < end:
            return None
        body = bytes(self.buffer[forkserver.HEADER.size:end])
        del self.buffer[:end]
        fds: list[int] = []
        if self.pending and self.pending[0][0] == 0:
            fds = self.pending.popleft()[1]
        self.pending = deque((offset - end, held) for offset, held in self.pending)
        try:
            return json.loads(body), fds
        except ValueError:
            _close(fds)
            raise trio.BrokenResourceError("a frame that is not JSON") from None

    def close(self) -> None:
        for _, fds in self.pending:
            _close(fds)
        self.pending.clear()


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
