"""The engine's HTTP/1.1 server, driven over a real Unix socket with raw bytes."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from hutch.engine.httpd.server import HTTPServer

Scope = dict[str, Any]


async def echo_app(scope: Scope, receive: Callable[[], Awaitable[Any]],
                   send: Callable[[Any], Awaitable[None]]) -> None:
    """Answers with the method, path, query and the whole body it received."""
    body = b""
    while True:
        message = await receive()
        assert message["type"] == "http.request"
        body += message["body"]
        if not message["more_body"]:
            break
    path = scope["path"]
    if path == "/boom":
        raise RuntimeError("the app failed")
    if path == "/nothing":
        return
    if path == "/empty":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    text = f"{scope['method']} {path} {scope['query_string'].decode()} ".encode() + body
    if path == "/chunks":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one,", b"", b"two"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(text)).encode())]})
    await send({"type": "http.response.body", "body": text})


class Client:
    """A raw connection: send bytes, read one answer."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    async def _more(self) -> bool:
        data = await self.stream.receive_some(65536)
        self.buf += data
        return bool(data)

    async def answer(self) -> tuple[int, dict[str, str], bytes]:
        with trio.fail_after(5):
            while b"\r\n\r\n" not in self.buf:
                assert await self._more(), f"closed before an answer: {self.buf!r}"
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            status_line, *lines = head.decode().split("\r\n")
            status = int(status_line.split(" ")[1])
            headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines)}
            if "content-length" in headers:
                size = int(headers["content-length"])
                while len(self.buf) < size:
                    assert await self._more()
                body, self.buf = self.buf[:size], self.buf[size:]
            elif headers.get("transfer-encoding") == "chunked":
                body = b""
                while True:
                    while b"\r\n" not in self.buf:
                        assert await self._more()
                    line, rest = self.buf.split(b"\r\n", 1)
                    size = int(line, 16)
                    while len(rest) < size + 2:
                        assert await self._more()
                        line, rest = self.buf.split(b"\r\n", 1)
                    body += rest[:size]
                    self.buf = rest[size + 2:]
                    if size == 0:
                        break
            else:
                body = b""
            return status, headers, body

    async def closed(self) -> bool:
        """Whether the server closes the connection (within the deadline)."""
        with trio.fail_after(5):
            while await self._more():
                pass
        return True


async def with_server(tmp_path: Path, app: Any,
                      test: Callable[[Callable[[], Awaitable[Client]], trio.Event],
                                     Awaitable[None]]) -> None:
    path = str(tmp_path / "s.sock")
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.bind(path)
    raw.listen(16)
    stop = trio.Event()

    async def connect() -> Client:
        return Client(await trio.open_unix_socket(path))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(HTTPServer(app).serve, trio.socket.from_stdlib_socket(raw),
                                stop.wait)
            await test(connect, stop)
            stop.set()


def run(tmp_path: Path, test: Any, app: Any = echo_app) -> None:
    trio.run(with_server, tmp_path, app, test)


def test_keep_alive_and_bodies(tmp_path: Path) -> None:
    async def test(connect: Any, stop: trio.Event) -> None:
        c = await connect()
        await c.stream.send_all(b"GET /a%20b?x=1 HTTP/1.1\r\nHost: e\r\n\r\n")
        assert await c.answer() == (200, {"content-type": "text/plain",
                                          "content-length": "13"}, b"GET /a b x=1 ")
        await c.stream.send_all(b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        status, _, body = await c.answer()
        assert (status, body) == (200, b"POST /p  hello")
        # chunked request body, with an extension and a trailer
        await c.stream.send_all(b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                                b"3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: t\r\n\r\n")
        status, _, body = await c.answer()
        assert (status, body) == (200, b"PUT /c  abcde")
        await c.stream.send_all(b"GET /chunks HTTP/1.1\r\n\r\n")
        status, headers, body = await c.answer()
        assert headers["transfer-encoding"] == "chunked" and body == b"one,two"
    run(tmp_path, test)


def test_pipelined_requests_are_answered_in_order(tmp_path: Path) -> None:
    async def test(connect: Any, stop: trio.Event) -> None:
        c = await connect()
        await c.stream.send_all(b"GET /1 HTTP/1.1\r\n\r\nPOST /2 HTTP/1.1\r\n"
                                b"Content-Length: 2\r\n\r\nokGET /3 HTTP/1.1\r\n\r\n")
        assert [(await c.answer())[2] for _ in range(3)] == [b"GET /1  ", b"POST /2  ok",
                                                             b"GET /3  "]
    run(tmp_path, test)


def test_head_204_and_http10(tmp_path: Path) -> None:
    async def test(connect: Any, stop: trio.Event) -> None:
        c = await connect()
        await c.stream.send_all(b"HEAD /h HTTP/1.1\r\n\r\n")
        # HEAD: the headers of a GET, no body
        await c.stream.send_all(b"GET /empty HTTP/1.1\r\n\r\n")
        with trio.fail_after(5):
            while c.buf.count(b"\r\n\r\n") < 2:
                assert await c._more()
        first, second = c.buf.split(b"\r\n\r\n")[:2]
        assert first.startswith(b"HTTP/1.1 200 ") and b"content-length: 9" in first
        assert second.startswith(b"HTTP/1.1 204 ") and b"content-length" not in second
        c2 = await connect()
        await c2.stream.send_all(b"GET /chunks HTTP/1.0\r\n\r\n")
        # HTTP/1.0 has no chunked coding: the body ends with the connection
        await c2.closed()
        assert c2.buf.endswith(b"\r\n\r\none,two") and b"connection: close" in c2.buf
    run(tmp_path, test)


def test_malformed_requests_get_4xx_and_a_closed_connection(tmp_path: Path) -> None:
    async def test(connect: Any, stop: trio.Event) -> None:
        for raw, status in [(b"GET /\r\n\r\n", 400),
                            (b"GET / HTTP/3.0\r\n\r\n", 505),
                            (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
                            (b"GET / HTTP/1.1\r\nX: " + b"a" * 70000, 431)]:
            c = await connect()
            await c.stream.send_all(raw)
            got, headers, _ = await c.answer()
            assert (got, headers["connection"]) == (status, "close")
            assert await c.closed()
    run(tmp_path, test)


def test_app_failures_are_500_and_the_server_lives_on(tmp_path: Path) -> None:
    async def test(connect: Any, stop: trio.Event) -> None:
        for path in ("/boom", "/nothing"):
            c = await connect()
            await c.stream.send_all(f"GET {path} HTTP/1.1\r\n\r\n".encode())
            assert (await c.answer())[0] == 500
            assert await c.closed()
        c = await connect()
        await c.stream.send_all(b"GET /fine HTTP/1.1\r\n\r\n")
        assert (await c.answer())[0] == 200
    run(tmp_path, test)


def test_expect_100_continue(tmp_path: Path) -> None:
    async def test(connect: Any, stop: trio.Event) -> None:
        c = await connect()
        await c.stream.send_all(b"POST /e HTTP/1.1\r\nContent-Length: 3\r\n"
                                b"Expect: 100-continue\r\n\r\n")
        assert (await c.answer())[0] == 100
        await c.stream.send_all(b"abc")
        assert (await c.answer())[2] == b"POST /e  abc"
    run(tmp_path, test)


def test_an_unread_body_is_drained_and_the_connection_kept(tmp_path: Path) -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"no"})

    async def test(connect: Any, stop: trio.Event) -> None:
        c = await connect()
        await c.stream.send_all(b"POST /x HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody"
                                b"GET /y HTTP/1.1\r\n\r\n")
        assert [(await c.answer())[0] for _ in range(2)] == [404, 404]
    run(tmp_path, test, app)


def test_a_streams_head_comes_before_its_first_part(tmp_path: Path) -> None:
    release = trio.Event()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await release.wait()  # a followed log with nothing new yet
        await send({"type": "http.response.body", "body": b"later"})

    async def test(connect: Any, stop: trio.Event) -> None:
        c = await connect()
        await c.stream.send_all(b"GET /s HTTP/1.1\r\n\r\n")
        with trio.fail_after(5):
            while b"\r\n\r\n" not in c.buf:
                assert await c._more()
        assert b"transfer-encoding: chunked" in c.buf
        release.set()
        assert (await c.answer())[2] == b"later"
    run(tmp_path, test, app)


def test_a_client_that_leaves_a_stream_is_seen_as_a_disconnect(tmp_path: Path) -> None:
    seen = trio.Event()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "http.request"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        assert (await receive())["type"] == "http.disconnect"  # waits for the client
        seen.set()

    async def test(connect: Any, stop: trio.Event) -> None:
        c = await connect()
        await c.stream.send_all(b"GET /s HTTP/1.1\r\n\r\n")
        with trio.fail_after(5):
            while b"first" not in c.buf:
                assert await c._more()
        await c.stream.aclose()
        with trio.fail_after(5):
            await seen.wait()
    run(tmp_path, test, app)


def test_stop_closes_idle_connections_and_finishes_requests_in_flight(tmp_path: Path) -> None:
    release = trio.Event()
    entered = trio.Event()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["path"] == "/slow":
            entered.set()
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    async def test(connect: Any, stop: trio.Event) -> None:
        idle, busy = await connect(), await connect()
        await busy.stream.send_all(b"GET /slow HTTP/1.1\r\n\r\n")
        await entered.wait()
        stop.set()
        assert await idle.closed()
        release.set()
        status, headers, body = await busy.answer()
        assert (status, body, headers["connection"]) == (200, b"done", "close")
        assert await busy.closed()
    run(tmp_path, test, app)
