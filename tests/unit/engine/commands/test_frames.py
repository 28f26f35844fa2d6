"""The zygote's frames as the engine reads them: several per read, split across reads,
and each frame's descriptors with it, however the kernel batched them."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from hutch.engine.commands import forkserver, frames
from hutch.engine.commands.frames import FrameReader


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    yield ours, theirs
    ours.close()
    theirs.close()


def _read_all(ours: socket.socket, count: int) -> list[tuple[object, list[int]]]:
    async def main() -> list[tuple[object, list[int]]]:
        reader = FrameReader(ours)
        got = []
        for _ in range(count):
            got.append(await reader.next())
        return got
    return trio.run(main)


def _inode(fd: int) -> int:
    return os.fstat(fd).st_ino


def test_frames_sent_together_come_apart_with_their_descriptors(
        pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    try:
        forkserver.send(theirs, {"id": "a", "exit": 0})
        forkserver.send(theirs, {"id": "b", "pid": 7}, [r1])  # fds on the second frame
        forkserver.send(theirs, {"id": "c", "exit": 1})
        forkserver.send(theirs, {"id": "d", "pid": 8}, [r2, w2])
        got = _read_all(ours, 4)
        assert [obj for obj, _ in got] == [{"id": "a", "exit": 0}, {"id": "b", "pid": 7},
                                           {"id": "c", "exit": 1}, {"id": "d", "pid": 8}]
        assert [len(fds) for _, fds in got] == [0, 1, 0, 2]
        assert _inode(got[1][1][0]) == _inode(r1)
        assert [_inode(fd) for fd in got[3][1]] == [_inode(r2), _inode(w2)]
        for _, fds in got:
            for fd in fds:
                os.close(fd)
    finally:
        for fd in (r1, w1, r2, w2):
            os.close(fd)


def test_a_frame_split_across_reads_is_whole(pair: tuple[socket.socket, socket.socket]
                                             ) -> None:
    ours, theirs = pair
    big = {"id": "x", "pad": "y" * 200_000}  # more than one read takes

    async def main() -> tuple[object, list[int]]:
        reader = FrameReader(ours)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, forkserver.send, theirs, big)
            return await reader.next()
    obj, fds = trio.run(main)
    assert obj == big and fds == []


def test_the_end_of_the_stream_is_none(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    forkserver.send(theirs, {"id": "last"})
    theirs.shutdown(socket.SHUT_WR)
    assert _read_all(ours, 2) == [({"id": "last"}, []), (None, [])]


def test_a_frame_that_is_not_json_breaks_the_link(pair: tuple[socket.socket, socket.socket]
                                                  ) -> None:
    ours, theirs = pair
    theirs.sendall(forkserver.HEADER.pack(3) + b"{{{")
    with pytest.raises(trio.BrokenResourceError):
        _read_all(ours, 1)


def test_a_frame_goes_whole_with_its_descriptors(pair: tuple[socket.socket, socket.socket]
                                                 ) -> None:
    ours, theirs = pair
    r, w = os.pipe()
    try:
        trio.run(frames.send_frame, ours, {"op": "spawn", "id": "e"}, [r])
        obj, fds = forkserver.receive(theirs)
        assert obj == {"op": "spawn", "id": "e"} and len(fds) == 1
        assert _inode(fds[0]) == _inode(r)
        os.close(fds[0])
    finally:
        os.close(r)
        os.close(w)


def test_a_peer_that_reads_nothing_is_given_up_without_stopping_the_loop(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """The engine's loop runs on while the socket is full; after SEND_TIMEOUT the peer is
    given up (a fork server stuck that long is started again), never half a frame left
    to garble the next: the send was shielded from the caller's cancellation."""
    ours, _theirs = pair
    ticks = 0

    async def main() -> None:
        nonlocal ticks

        async def tick() -> None:
            nonlocal ticks
            while True:
                await trio.sleep(1)
                ticks += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick)
            with trio.move_on_after(1.5):  # the caller gives up: the frame still goes on
                with pytest.raises(trio.BrokenResourceError):
                    await frames.send_frame(ours, {"pad": "x" * (8 << 20)})
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert ticks >= frames.SEND_TIMEOUT - 1  # (the loop ran all along)


def test_descriptors_go_to_their_frame_when_a_read_cuts_its_header(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """A read of READ_SIZE bytes that ends two bytes into the header of the frame that
    carries descriptors: they are that frame's, not the one before it."""
    ours, theirs = pair
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    first = {"id": "a", "exit": 0, "pad": ""}
    size = len(json.dumps(first).encode())
    first["pad"] = "x" * (frames.READ_SIZE - forkserver.HEADER.size - size - 2)
    r, w = os.pipe()
    try:
        forkserver.send(theirs, first)  # (both queued before the reads: the cut is exact)
        forkserver.send(theirs, {"id": "b", "pid": 7}, [r])

        async def main() -> list[tuple[object, list[int]]]:
            reader = FrameReader(ours)
            return [await reader.next(), await reader.next()]
        (a, a_fds), (b, b_fds) = trio.run(main)
        assert a == first and a_fds == []
        assert b == {"id": "b", "pid": 7} and len(b_fds) == 1
        assert _inode(b_fds[0]) == _inode(r)
        os.close(b_fds[0])
    finally:
        os.close(r)
        os.close(w)


def test_a_zygote_whose_send_failed_is_killed(pair: tuple[socket.socket, socket.socket]
                                              ) -> None:
    """Part of a frame may have gone: the zygote would wait for the rest for good, and
    every exec of its sandbox with it.  It is killed, so that its reader ends and reports
    them lost."""
    import subprocess

    from hutch.engine.commands.zygote import ZygoteError, ZygoteLink

    ours, theirs = pair
    child = subprocess.Popen(["sleep", "60"])  # (stands for the zygote's process)
    try:
        async def main() -> bool:
            link = ZygoteLink(ours, child.pid, FrameReader(ours))
            theirs.close()  # its end gone: the send fails
            with pytest.raises(ZygoteError):
                await link._send({"op": "spawn", "id": "e"})
            os.close(link.pidfd)
            return link.alive
        assert trio.run(main) is False
        assert child.wait(timeout=10) == -9
    finally:
        child.kill()
