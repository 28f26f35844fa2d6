"""The SDK's small HTTP/1.1 client, against a scripted server on a Unix socket."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from hutch.sdk import http11, syncbridge


def test_requests_are_encoded_as_httpx_would() -> None:
    data = http11.encode_request("POST", "/v1/execs/ex 1/stdin", {"eof": True, "n": None},
                                 b"abc", "application/octet-stream")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/execs/ex%201/stdin?eof=true&n= HTTP/1.1"
    assert "Content-Length: 3" in lines and "Content-Type: application/octet-stream" in lines
    assert body == b"abc"
    empty = http11.encode_request("POST", "/x", None, None, None)
    assert b"Content-Length: 0\r\n" in empty
    assert b"Content-Length" not in http11.encode_request("GET", "/x", None, None, None)


Handler = Callable[[socket.socket, int], None]


@contextmanager
def server(tmp_path: Path, handle: Handler) -> Iterator[tuple[str, list[int]]]:
    """Serve ``handle(conn, n)`` for each accepted connection ``n``; yields the socket
    path and the list of connection numbers seen."""
    path = str(tmp_path / "s.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(8)
    seen: list[int] = []

    def loop() -> None:
        n = 0
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            seen.append(n)
            threading.Thread(target=handle, args=(conn, n), daemon=True).start()
            n += 1

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield path, seen
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        data += chunk
    return data


def _answer(body: bytes, extra: str = "") -> bytes:
    return (f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n{extra}\r\n").encode() + body


def test_keep_alive_and_chunked_answers(tmp_path: Path) -> None:
    def handle(conn: socket.socket, n: int) -> None:
        while _read_request(conn):
            conn.sendall(_answer(b'{"a":1}'))
            if not _read_request(conn):
                return
            conn.sendall(b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n"
                         b"4\r\n{\"b\"\r\n3\r\n:2}\r\n0\r\n\r\n")

    async def main(path: str) -> None:
        pool = http11.Pool(path)
        first = await pool.request("GET", "/one")
        assert (first.status, first.json()) == (200, {"a": 1})
        second = await pool.request("GET", "/two")
        assert (second.status, second.json(), second.is_success) == (404, {"b": 2}, False)
        await pool.aclose()

    with server(tmp_path, handle) as (path, seen):
        anyio.run(main, path)
        assert seen == [0]  # both on one connection


def test_a_stale_connection_is_replaced(tmp_path: Path) -> None:
    closed = threading.Event()

    def handle(conn: socket.socket, n: int) -> None:
        if _read_request(conn):
            conn.sendall(_answer(b"1"))
        if n == 0:
            conn.close()  # the engine restarted: the idle connection is gone
            closed.set()
            return
        while _read_request(conn):
            conn.sendall(_answer(b"2"))

    async def main(path: str) -> None:
        pool = http11.Pool(path)
        assert (await pool.request("GET", "/")).json() == 1
        await anyio.to_thread.run_sync(closed.wait, 10)  # (closed while idle, not later)
        assert (await pool.request("GET", "/")).json() == 1  # on a new connection
        await pool.aclose()

    with server(tmp_path, handle) as (path, seen):
        anyio.run(main, path)
        assert seen == [0, 1]


def test_a_request_written_whole_is_not_sent_again(tmp_path: Path) -> None:
    """The engine read the request, then died without a byte of answer: the pool reports
    it (the engine may have acted on it) rather than send it again on a new connection."""
    closed = threading.Event()

    def handle(conn: socket.socket, n: int) -> None:
        if _read_request(conn):
            conn.sendall(_answer(b"1"))
        if _read_request(conn):
            closed.set()  # (before the close: the client sees the close at once)
            conn.close()  # the second request is read, never answered

    async def main(path: str) -> None:
        pool = http11.Pool(path)
        assert (await pool.request("GET", "/")).json() == 1
        with pytest.raises(http11.NoAnswer):
            await pool.request("POST", "/v1/sandboxes", body=b"{}",
                               content_type="application/json")
        await pool.aclose()

    with server(tmp_path, handle) as (path, seen):
        anyio.run(main, path)
        assert closed.is_set() and seen == [0]  # one connection, the POST sent once


def test_an_answer_cut_short_is_an_error(tmp_path: Path) -> None:
    def handle(conn: socket.socket, n: int) -> None:
        if _read_request(conn):
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n123")
            conn.close()

    async def main(path: str) -> None:
        pool = http11.Pool(path)
        with pytest.raises(ConnectionResetError):
            await pool.request("POST", "/v1/sandboxes", body=b"{}",
                               content_type="application/json")
        await pool.aclose()

    with server(tmp_path, handle) as (path, seen):
        anyio.run(main, path)
        assert seen == [0]  # not sent again: the answer had begun


def test_garbage_is_a_protocol_error(tmp_path: Path) -> None:
    def handle(conn: socket.socket, n: int) -> None:
        if _read_request(conn):
            conn.sendall(b"SSH-2.0-OpenSSH\r\n\r\n")

    async def main(path: str) -> None:
        pool = http11.Pool(path)
        with pytest.raises(http11.ProtocolError):
            await pool.request("GET", "/")
        await pool.aclose()

    with server(tmp_path, handle) as (path, _):
        anyio.run(main, path)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_cancelled_requests_do_not_poison_the_pool(tmp_path: Path, backend: str) -> None:
    release = threading.Event()

    def handle(conn: socket.socket, n: int) -> None:
        while _read_request(conn):
            if n == 0:
                release.wait(10)  # never answers in time
            try:
                conn.sendall(_answer(str(n).encode()))
            except BrokenPipeError:
                return  # the client gave up on this connection, as it should

    async def main(path: str) -> None:
        pool = http11.Pool(path)
        with anyio.move_on_after(0.2):
            await pool.request("GET", "/slow")
        release.set()
        assert (await pool.request("GET", "/")).json() == 1  # not the late answer of 0
        await pool.aclose()

    with server(tmp_path, handle) as (path, _):
        anyio.run(main, path, backend=backend)


def test_the_blocking_pool_answers_direct_calls_and_replaces_stale_connections(
        tmp_path: Path) -> None:
    closed = threading.Event()

    def handle(conn: socket.socket, n: int) -> None:
        if _read_request(conn):
            conn.sendall(_answer(str(n).encode()))
        if n == 0:
            conn.close()  # the engine restarted: the idle connection is gone
            closed.set()
            return
        while _read_request(conn):
            conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                         b"1\r\n7\r\n0\r\n\r\n")

    async def main(path: str) -> list[Any]:
        pool = http11.BlockingPool(path)
        got = [(await pool.request("GET", "/")).json()]
        closed.wait(10)  # (closed while idle, not after the next request was written)
        got += [(await pool.request("GET", "/")).json() for _ in range(2)]
        await pool.aclose()
        return got

    with server(tmp_path, handle) as (path, seen):
        # run_direct: no event loop at all, so nothing in the pool may suspend
        assert syncbridge.run_direct(main, path) == [0, 1, 7]
        assert seen == [0, 1]


@pytest.mark.parametrize("blocking", [False, True])
def test_an_answer_before_the_whole_body_is_read(tmp_path: Path, blocking: bool) -> None:
    """The engine refuses a file write (a FIFO, say) before reading its 4 MiB body and
    closes: the client's send breaks, and the answer already sent is what it reports."""
    def handle(conn: socket.socket, n: int) -> None:
        _read_request(conn)
        body = b'{"type":"file_error","message":"Not a regular file (a FIFO)"}'
        conn.sendall(f"HTTP/1.1 400 Bad Request\r\ncontent-length: {len(body)}\r\n"
                     "connection: close\r\n\r\n".encode() + body)
        conn.close()

    async def main(path: str) -> None:
        pool = http11.BlockingPool(path) if blocking else http11.Pool(path)
        answer = await pool.request("PUT", "/v1/sandboxes/sb/fs/file", body=b"x" * (4 << 20),
                                    content_type="application/octet-stream")
        assert answer.status == 400 and "FIFO" in answer.json()["message"]
        await pool.aclose()

    with server(tmp_path, handle) as (path, _):
        anyio.run(main, path)
