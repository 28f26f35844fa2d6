"""Reads and writes that pass through trio's scheduler only when they would block."""

from __future__ import annotations

import os
import socket

import pytest
import trio

from hutch.engine.kernel import fdio


def test_a_read_that_need_not_wait_passes_no_checkpoint() -> None:
    """What the module is for: a pipe with data is read without a scheduler pass (trio's
    FdStream makes two), and one without waits for it."""
    r, w = os.pipe()
    os.set_blocking(r, False)

    async def main() -> tuple[bytes, bytes]:
        os.write(w, b"ready")
        with trio.CancelScope() as scope:
            scope.cancel()  # a checkpoint would raise Cancelled here
            now = await fdio.receive_some(r, 100)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, os.write, w, b"later")
            later = await fdio.receive_some(r, 100)
        return now, later

    try:
        assert trio.run(main) == (b"ready", b"later")
    finally:
        os.close(r)
        os.close(w)


def test_a_closed_socket_is_never_written_through_its_old_number() -> None:
    """A socket another task closed fails the send (EBADF) instead of writing into the
    file that took its descriptor number since."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    number = ours.fileno()
    ours.close()
    r, w = os.pipe()
    try:
        if number not in (r, w):
            pytest.skip("the descriptor number was not reused")
        with pytest.raises(trio.BrokenResourceError):
            trio.run(fdio.send_all, ours, b"a request for the fork server")
        os.set_blocking(r, False)
        with pytest.raises(BlockingIOError):
            os.read(r, 100)  # nothing reached the pipe
    finally:
        os.close(r)
        os.close(w)
        theirs.close()


def test_a_full_socket_is_waited_for() -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    payload = b"x" * (4 << 20)  # far more than the socket holds

    async def main() -> bytes:
        got = bytearray()

        async def drain() -> None:
            while len(got) < len(payload):
                got.extend(await trio.to_thread.run_sync(theirs.recv, 1 << 20))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            await fdio.send_all(ours, payload)
        return bytes(got)

    try:
        assert trio.run(main) == payload
    finally:
        ours.close()
        theirs.close()
