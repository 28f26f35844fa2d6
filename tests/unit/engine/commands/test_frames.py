"""The zygote's frames as the engine reads them: several per read, split across reads,
and each frame's descriptors with it, however the kernel batched them."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
import trio

from hutch.engine.commands import forkserver
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
