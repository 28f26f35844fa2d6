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


def _read_chunked(conn: socket.socket, pending: bytes) -> tuple[list[bytes], bytes]:
    """The chunks of a chunked body that follows ``pending`` on ``conn``."""
    chunks: list[bytes] = []
    data = pending
    while True:
        while b"\r\n" not in data:
            data += conn.recv(65536)
        line, data = data.split(b"\r\n", 1)
        size = int(line, 16)
        while len(data) < size + 2:
            data += conn.recv(65536)
        if size == 0:
            return chunks, data[2:]
        chunks.append(data[:size])
        data = data[size + 2:]


def test_a_body_given_as_an_iterator_is_sent_chunked(tmp_path: Path) -> None:
    """An upload of unknown length: chunked, empty pieces skipped (an empty chunk would end
    the body), and the connection kept for the next request."""
    got: list[tuple[bytes, list[bytes]]] = []

    def handle(conn: socket.socket, n: int) -> None:
        while data := _read_request(conn):
            head, _, rest = data.partition(b"\r\n\r\n")
            chunks, _ = _read_chunked(conn, rest)
            got.append((head, chunks))
            conn.sendall(_answer(b'{"size":%d}' % sum(map(len, chunks))))

    async def body() -> Any:
        for piece in (b"abc", b"", b"d" * 70000):
            yield piece

    async def main(path: str) -> None:
        pool = http11.Pool(path)
        for _ in range(2):
            answer = await pool.request("PUT", "/v1/f", body=body(),
                                        content_type="application/octet-stream")
            assert answer.json() == {"size": 70003}
        await pool.aclose()

    with server(tmp_path, handle) as (path, seen):
        anyio.run(main, path)
        assert seen == [0] and len(got) == 2
    head, chunks = got[0]
    lines = head.decode().split("\r\n")
    assert "Transfer-Encoding: chunked" in lines and not any(
        line.startswith("Content-Length") for line in lines)
    assert chunks == [b"abc", b"d" * 70000]


def test_a_failing_body_source_raises_its_own_error(tmp_path: Path) -> None:
    """The local file behind an upload vanishes halfway: its error is what the caller sees,
    and the half-sent connection is not reused."""
    def handle(conn: socket.socket, n: int) -> None:
        while data := _read_request(conn):
            if data.startswith(b"PUT"):
                try:
                    _read_chunked(conn, data.partition(b"\r\n\r\n")[2])
                except (OSError, ValueError):
                    return  # the client closed mid-body
            conn.sendall(_answer(b"1"))

    async def body() -> Any:
        yield b"first"
        raise FileNotFoundError("gone")

    async def main(path: str) -> None:
        pool = http11.Pool(path)
        with pytest.raises(FileNotFoundError, match="gone"):
            await pool.request("PUT", "/v1/f", body=body())
        assert (await pool.request("GET", "/")).json() == 1
        await pool.aclose()

    with server(tmp_path, handle) as (path, seen):
        anyio.run(main, path)
        assert seen == [0, 1]


def test_a_streamed_body_is_not_read_on_a_stale_connection(tmp_path: Path) -> None:
    """The idle connection died with the engine: the upload goes whole on a new one, its
    iterator read once."""
    closed = threading.Event()
    got: list[list[bytes]] = []

    def handle(conn: socket.socket, n: int) -> None:
        if n == 0:
            if _read_request(conn):
                conn.sendall(_answer(b"1"))
            conn.close()
            closed.set()
            return
        while data := _read_request(conn):
            chunks, _ = _read_chunked(conn, data.partition(b"\r\n\r\n")[2])
            got.append(chunks)
            conn.sendall(_answer(b"2"))

    reads: list[int] = []

    async def body() -> Any:
        for i in range(3):
            reads.append(i)
            yield b"x%d" % i

    async def main(path: str) -> None:
        pool = http11.Pool(path)
        assert (await pool.request("GET", "/")).json() == 1
        await anyio.to_thread.run_sync(closed.wait, 10)
        assert (await pool.request("PUT", "/v1/f", body=body())).json() == 2
        await pool.aclose()

    with server(tmp_path, handle) as (path, seen):
        anyio.run(main, path)
        assert seen == [0, 1]
    assert got == [[b"x0", b"x1", b"x2"]] and reads == [0, 1, 2]


def test_a_large_answer_arrives_in_pieces(tmp_path: Path) -> None:
    """A 5 MiB download is handed on as it arrives, never more than a piece at a time."""
    size = 5 << 20

    def handle(conn: socket.socket, n: int) -> None:
        if _read_request(conn):
            conn.sendall(f"HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n".encode())
            for _ in range(5):
                conn.sendall(b"z" * (1 << 20))

    async def main(path: str) -> list[int]:
        pool = http11.Pool(path)
        sizes: list[int] = []
        async with pool.stream("GET", "/file") as (answer, chunks):
            assert answer.status == 200
            async for chunk in chunks:
                assert set(chunk) == {ord("z")}
                sizes.append(len(chunk))
        await pool.aclose()
        return sizes

    with server(tmp_path, handle) as (path, _):
        sizes = anyio.run(main, path)
    assert sum(sizes) == size and max(sizes) <= http11.PIECE_SIZE


def test_uploads_and_downloads_through_the_engines_own_server(tmp_path: Path) -> None:
    """The client and the engine's HTTP server agree on chunked bodies both ways: the
    server's parser takes the upload, and its chunked answer is read back whole."""
    import hashlib

    import trio

    from hutch.engine.httpd.server import HTTPServer

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        digest, size = hashlib.sha256(), 0
        while True:
            message = await receive()
            digest.update(message.get("body", b""))
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        for _ in range(3):  # no length: the server answers chunked
            await send({"type": "http.response.body", "body": b"%d:" % size,
                        "more_body": True})
        await send({"type": "http.response.body", "body": digest.hexdigest().encode()})

    path = str(tmp_path / "engine.sock")
    stop = threading.Event()
    ready = threading.Event()

    async def serve() -> None:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.bind(path)
        sock.listen(8)

        async def stopped() -> None:
            await trio.to_thread.run_sync(stop.wait)

        async with trio.open_nursery() as nursery:
            await nursery.start(HTTPServer(app).serve, sock, stopped)
            ready.set()

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    data = bytes(range(256)) * 8192  # 2 MiB

    async def body() -> Any:
        for at in range(0, len(data), 300000):
            yield data[at:at + 300000]

    async def main() -> bytes:
        pool = http11.Pool(path)
        answer = await pool.request("PUT", "/v1/f", body=body())
        await pool.aclose()
        return answer.body

    try:
        assert ready.wait(10)
        answer = anyio.run(main)
    finally:
        stop.set()
        thread.join(10)
    assert answer == b"%d:" % len(data) * 3 + hashlib.sha256(data).hexdigest().encode()
