"""The engine's HTTP/1.1 server: ASGI over the Unix socket, on trio.

Why not hypercorn: profiling a stream of no-op requests put ~0.9 ms of engine CPU in each
one, almost all of it in hypercorn's general machinery (h11's state machine, a task group
and worker context per request, per-event send paths), against ~0.05 ms for the handler.
Every SDK call pays it, twice for an exec.  The engine only ever speaks HTTP/1.1 to local
clients over a Unix socket, so this server does only that, in the plain way: one task per
connection that reads a request head, hands the request to the ASGI app with a ``receive``
that streams the body and a ``send`` that frames the answer, and loops while the
connection is kept alive.  No HTTP/2, no TLS, no websockets (the engine has none).

The parts a client relies on are kept: keep-alive, ``Content-Length`` and chunked bodies
both ways, ``Expect: 100-continue``, HEAD, ``http.disconnect`` when a client leaves while
its answer streams (so a followed log stops at once), pipelined requests, clear 4xx/5xx
answers to malformed requests (with the connection closed after), and a graceful stop:
idle connections close, requests in flight finish.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import trio

from hutch.engine.httpd import parse as httpparse
from hutch.engine.httpd.parse import BadRequest, Request
from hutch.engine.kernel import fdio

log = logging.getLogger("hutch.http")

#: Requests of one connection answered in a row, at most, before the scheduler is let in.
YIELD_EVERY = 16

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]],
                    Callable[[Message], Awaitable[None]]], Awaitable[None]]

#: Bytes read from the socket at a time, and body chunks handed to the app at most.
READ_SIZE = 64 * 1024
#: A request body the app left unread is drained (to keep the connection) up to this size.
MAX_DRAIN = 256 * 1024
#: Bytes of pipelined requests buffered while an answer streams; past it, reading pauses.
MAX_PIPELINED = 64 * 1024
#: Bodies larger than this are sent without copying them into the framing.
COPY_LIMIT = 16 * 1024


class ClientDisconnected(OSError):
    """``send`` on a connection the client has closed (ASGI: an ``OSError`` subclass)."""


class _PeerClosed(Exception):
    """The client closed the connection (or reset it) while we read."""


class HTTPServer:
    """Serves one ASGI app on a listening socket until ``shutdown_trigger`` returns."""

    def __init__(self, app: ASGIApp, keep_alive_timeout: float = 300.0) -> None:
        self.app = app
        self.keep_alive_timeout = keep_alive_timeout
        self.stopping = False
        self._idle: set[trio.CancelScope] = set()

    async def serve(self, sock: trio.socket.SocketType,
                    shutdown_trigger: Callable[[], Awaitable[Any]],
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and serve until the trigger fires; then stop accepting, close the idle
        connections and wait for the requests in flight."""
        listener = trio.SocketListener(sock)
        async with trio.open_nursery() as nursery:
            accepting = trio.CancelScope()

            async def accept_loop() -> None:
                # trio's loop: each connection in our nursery (so it outlives the loop's
                # cancel), accept() retried after 100 ms on EMFILE, ENFILE, ENOMEM, ENOBUFS
                with accepting:
                    await trio.serve_listeners(self._connection, [listener],
                                               handler_nursery=nursery)

            nursery.start_soon(accept_loop)
            task_status.started()
            await shutdown_trigger()
            self.stopping = True
            accepting.cancel()
            for scope in list(self._idle):
                scope.cancel()
        await listener.aclose()

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = _Connection(self, stream)
        try:
            await conn.run()
        except (_PeerClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


class _Connection:
    """One client connection: its read buffer and the request being answered."""

    def __init__(self, server: HTTPServer, stream: trio.SocketStream) -> None:
        self.server = server
        self.stream = stream
        self.buffer = bytearray()
        self.gone = False  # the client closed its side (or the socket broke)

    async def _fill(self) -> None:
        try:
            data = await fdio.receive_some(self.stream.socket.fileno(), READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.gone = True
            raise _PeerClosed from exc
        if not data:
            self.gone = True
            raise _PeerClosed
        self.buffer += data

    async def _read_head(self) -> bytes | None:
        """The next request head, or None when the client leaves, stays idle past the
        keep-alive timeout or the server stops meanwhile."""
        with trio.move_on_after(self.server.keep_alive_timeout) as idle:
            self.server._idle.add(idle)
            try:
                if self.server.stopping:
                    return None
                while True:
                    head = httpparse.take_head(self.buffer)
                    if head is not None:
                        return head
                    try:
                        await self._fill()
                    except _PeerClosed:
                        return None
            finally:
                self.server._idle.discard(idle)
        return None

    async def run(self) -> None:
        served = 0
        while True:
            served += 1
            if served % YIELD_EVERY == 0:
                # Reads and writes go through the scheduler only when they would block
                # (hutch.engine.kernel.fdio): a client that always has its next request
                # ready gets at most YIELD_EVERY answers before the others' turn.
                await trio.lowlevel.checkpoint()
            try:
                head = await self._read_head()
                if head is None:
                    return
                request = httpparse.parse_head(head)
            except BadRequest as exc:
                await self._send_error(exc.status, exc.reason)
                return
            exchange = _Exchange(self, request)
            keep = await exchange.run()
            if not keep or self.gone or self.server.stopping:
                return

    async def _send_error(self, status: int, reason: str) -> None:
        phrase = HTTPStatus(status).phrase
        body = f"{status} {phrase}: {reason}\n".encode()
        head = (f"HTTP/1.1 {status} {phrase}\r\n"
                "content-type: text/plain; charset=utf-8\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
        try:
            await self.stream.send_all(head + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


class _Exchange:
    """One request and its answer: the ASGI ``receive`` and ``send`` of one app call."""

    def __init__(self, conn: _Connection, request: Request) -> None:
        self.conn = conn
        self.request = request
        self.keep_alive = request.keep_alive
        self.body_left = request.content_length  # bytes still to read (not chunked)
        self.chunk_left = 0  # chunked: bytes left in the current chunk
        self.body_done = request.content_length == 0 and not request.chunked
        self.final_body_sent = False  # the app has been told the body's end
        self.started = False  # http.response.start received
        self.head_sent = False
        self.ending = False  # the app sent its last body part (it may still be written)
        self.complete = False  # the last body part has been written
        self.chunked_out = False
        self.length_out: int | None = None  # Content-Length the app announced
        self.sent_bytes = 0
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []
        self.continue_sent = False
        self.watch: trio.CancelScope | None = None  # a receive() waiting for disconnect
        self.reading = trio.Lock()

    def scope(self) -> Scope:
        req = self.request
        path, _, query = req.target.partition(b"?")
        return {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": req.version, "method": req.method, "scheme": "http",
            "path": unquote(path.decode("ascii")), "raw_path": path, "query_string": query,
            "root_path": "", "headers": req.headers, "client": None, "server": None,
        }

    async def run(self) -> bool:
        """Call the app; whether the connection can carry another request afterwards."""
        try:
            await self.conn.server.app(self.scope(), self.receive, self.send)
        except Exception as exc:
            if self.conn.gone:
                log.debug("client left during %s %s: %r", self.request.method,
                          self.request.target, exc)
                return False
            log.exception("error answering %s %s", self.request.method,
                          self.request.target.decode("ascii", "replace"))
            if not self.started:
                await self.conn._send_error(500, "internal engine error")
            return False
        if not self.complete:
            if not self.started and not self.conn.gone:
                log.error("no answer to %s %s", self.request.method,
                          self.request.target.decode("ascii", "replace"))
                await self.conn._send_error(500, "the engine gave no answer")
            return False
        if self.length_out is not None and self.sent_bytes != self.length_out \
                and self._has_body():
            return False  # the app's body did not match its Content-Length
        return self.keep_alive and await self._drain()

    async def _drain(self) -> bool:
        """Read (and drop) the body the app left, if it is small, to keep the connection."""
        if self.body_done:
            return True
        if self.request.chunked or self.body_left > MAX_DRAIN:
            return False
        try:
            with trio.move_on_after(1.0):
                while not self.body_done:
                    await self._read_body()
                return True
        except (_PeerClosed, BadRequest):
            pass
        return False

    # -- receive -----------------------------------------------------------------------

    async def receive(self) -> Message:
        if not self.body_done:
            if self.request.expect_continue and not self.continue_sent and not self.started:
                self.continue_sent = True
                await self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
            try:
                data = await self._read_body()
            except _PeerClosed:
                return {"type": "http.disconnect"}
            except BadRequest:
                self.keep_alive = False
                self.conn.gone = True  # the stream is unusable: treat as a disconnect
                return {"type": "http.disconnect"}
            if self.body_done:
                self.final_body_sent = True
            return {"type": "http.request", "body": data, "more_body": not self.body_done}
        if not self.final_body_sent:
            self.final_body_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._wait_disconnect()
        return {"type": "http.disconnect"}

    async def _wait_disconnect(self) -> None:
        """Return when the client leaves or the answer is complete (ASGI's disconnect).
        Bytes that arrive meanwhile are the next (pipelined) request: kept in the buffer."""
        async with self.reading:
            with trio.CancelScope() as watch:
                self.watch = watch
                try:
                    while not self.complete and not self.conn.gone:
                        if len(self.conn.buffer) > MAX_PIPELINED:
                            await trio.sleep_forever()  # until complete() cancels us
                        await self.conn._fill()
                except _PeerClosed:
                    pass
                finally:
                    self.watch = None

    async def _read_body(self) -> bytes:
        """The next piece of the request body (at most READ_SIZE)."""
        if not self.request.chunked:
            data = await self._take(self.body_left)
            self.body_left -= len(data)
            self.body_done = self.body_left == 0
            return data
        while True:
            if self.chunk_left:
                data = await self._take(self.chunk_left)
                self.chunk_left -= len(data)
                if self.chunk_left == 0:
                    await self._expect_crlf()
                return data
            size_line = await self._line()
            size = httpparse.chunk_size(size_line)
            if size == 0:
                while await self._line():  # trailer fields, ignored, up to the blank line
                    pass
                self.body_done = True
                return b""
            self.chunk_left = size

    async def _take(self, limit: int) -> bytes:
        """Up to ``limit`` (and READ_SIZE) bytes of body: what is buffered, else one read."""
        buf = self.conn.buffer
        if not buf:
            await self.conn._fill()
        data = bytes(buf[:min(limit, READ_SIZE)])
        del buf[:len(data)]
        return data

    async def _line(self) -> bytes:
        buf = self.conn.buffer
        while (end := buf.find(b"\r\n")) < 0:
            if len(buf) > httpparse.MAX_LINE:
                raise BadRequest(400, "chunk line too long")
            await self.conn._fill()
        line = bytes(buf[:end])
        del buf[:end + 2]
        return line

    async def _expect_crlf(self) -> None:
        if await self._line() != b"":
            raise BadRequest(400, "chunk data longer than its size")

    # -- send --------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.started = True
            self.status = int(message["status"])
            self.headers = list(message.get("headers", []))
            if not any(bytes(name).lower() == b"content-length" for name, _ in self.headers):
                # A stream (its first part may be long in coming): the head goes now.  With a
                # length, it waits to go out with the body, in one write.
                self.head_sent = True
                await self._write(self._head(None))
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        if not self.started or self.ending:
            raise RuntimeError("http.response.body outside a response")
        body = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        out: list[bytes] = []
        if not self.head_sent:
            out.append(self._head(None if more else len(body)))
            self.head_sent = True
        if body and self._has_body():
            self.sent_bytes += len(body)
            if self.chunked_out:
                out.append(b"%x\r\n" % len(body))
                out.append(body)
                out.append(b"\r\n")
            else:
                out.append(body)
        if not more:
            self.ending = True
            if self.chunked_out:
                out.append(b"0\r\n\r\n")
        if len(out) > 1 and sum(map(len, out)) <= COPY_LIMIT:
            out = [b"".join(out)]
        for part in out:
            await self._write(part)
        if not more:
            # Only now may receive() say "disconnect": an app that streams (Starlette's
            # StreamingResponse, the fast path's NDJSON) cancels its writing task when it
            # hears it, and a last write still waiting for the client was cut short while
            # the connection was kept: the client waited for the rest of the body forever.
            self.complete = True
            if self.watch is not None:
                self.watch.cancel()

    def _has_body(self) -> bool:
        return self.request.method != "HEAD" and self.status not in (204, 304)

    def _head(self, whole_length: int | None) -> bytes:
        """The status line and headers; ``whole_length`` is the body's size when the first
        body message is also the last (then Content-Length frames it, if the app gave
        none; an answer without one is otherwise chunked)."""
        try:
            phrase = HTTPStatus(self.status).phrase
        except ValueError:
            phrase = ""
        lines = [f"HTTP/1.1 {self.status} {phrase}".encode("ascii")]
        has_length = False
        for name, value in self.headers:
            name = bytes(name).lower()
            value = bytes(value)
            if b"\r" in value or b"\n" in value or not httpparse.is_token(name):
                raise RuntimeError(f"the app gave a malformed header {name!r}")
            if name == b"content-length":
                has_length = True
                self.length_out = int(value)
            elif name in (b"transfer-encoding", b"connection"):
                continue  # framing is this server's business
            lines.append(name + b": " + value)
        if has_length or self.status in (204, 304):
            pass
        elif whole_length is not None:  # for HEAD too: the size a GET would have
            lines.append(b"content-length: %d" % whole_length)
        elif self._has_body():
            if self.request.version == "1.1":
                self.chunked_out = True
                lines.append(b"transfer-encoding: chunked")
            else:
                self.keep_alive = False  # HTTP/1.0: the body ends when the connection does
        if not self.keep_alive or self.conn.server.stopping:
            self.keep_alive = False
            lines.append(b"connection: close")
        elif self.request.version == "1.0":
            lines.append(b"connection: keep-alive")
        return b"\r\n".join(lines) + b"\r\n\r\n"

    async def _write(self, data: bytes) -> None:
        if self.conn.gone:
            raise ClientDisconnected("the client closed the connection")
        try:
            await fdio.send_all(self.conn.stream.socket.fileno(), data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.conn.gone = True
            raise ClientDisconnected("the client closed the connection") from exc
