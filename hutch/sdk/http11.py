"""A small HTTP/1.1 client for the SDK's plain request/response calls to the engine.

Why not httpx for these: one ``GET /v1/health`` took 1.2 ms through httpx against 0.35 ms
on a raw socket, and an exec is two such calls.  The engine is the only server this client
talks to (its own HTTP/1.1 server on a Unix socket), and its answers to these calls are
JSON with a ``Content-Length`` (or chunked), so the client is small: keep-alive connections
in a pool, a request written in one send (or, for a body given as an iterator, chunked as
it comes), a response read as its body arrives.  It runs under trio and asyncio alike (anyio
streams), and is the SDK's only HTTP client: answers streamed (logs, exec output, file
downloads) and bodies streamed (file uploads) go through it too.

A pooled connection the engine closed while idle (a restarted daemon) refuses the request
(writing to a Unix socket whose peer has closed fails); the request is then sent on a new
connection.  One written whole is never sent again here: the engine had it.  Any other
failure closes the connection and is raised as :class:`OSError` or :class:`ProtocolError`,
which the transport translates at its boundary; two of them say how far the request got,
for the transport to decide whether it may repeat it after starting an engine:
:class:`NotSent` (the engine has none of it) and :class:`NoAnswer` (written whole, and the
connection closed before any answer).
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import anyio
import anyio.abc

#: Bytes read at a time; a body's pieces (file downloads) are read up to ``PIECE_SIZE``.
READ_SIZE = 65536
PIECE_SIZE = 1 << 20
#: Idle connections kept per pool, and for how many seconds one is used again: well
#: under the engine's 300 s keep-alive, since over TCP (a remote engine) a request written
#: to a connection the far end just closed is only found out by its missing answer.
MAX_IDLE = 8
MAX_IDLE_AGE = 60.0
#: Seconds a remote engine has to accept a connection and finish the TLS handshake.
CONNECT_TIMEOUT = 30.0

#: A request body: whole, or as an iterator sent with the chunked transfer coding (a file
#: upload, read as it goes: its length need not be known and it is never held whole).
Body = bytes | AsyncIterable[bytes]


class ProtocolError(Exception):
    """The engine's answer was not HTTP/1.1 as expected."""


class NotSent(ConnectionRefusedError):
    """No connection to the engine could be made (nobody listens, or no socket), or the
    one made was closed before the whole request was written: the engine has none of it,
    so it may be sent again once an engine runs."""


class NoAnswer(ConnectionResetError):
    """The whole request was written, and the engine closed the connection before any
    byte of an answer (it died, or was stopped): it may or may not have acted on it."""


@dataclass
class Response:
    status: int
    body: bytes

    @property
    def status_code(self) -> int:
        return self.status

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


def _param(value: object) -> str:
    """A query value as httpx writes it (``true``/``false``, ``""`` for None)."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return "" if value is None else str(value)


def encode_request(method: str, path: str, params: dict[str, Any] | None,
                   body: bytes | None, content_type: str | None,
                   chunked: bool = False, extra: Sequence[str] = ()) -> bytes:
    """The request's head, followed by ``body`` when there is one; ``chunked``: the body
    follows in chunks (:func:`encode_chunk`) instead; ``extra``: more header lines (a
    remote engine's ``Authorization``)."""
    target = quote(path, safe="/:@!$&'()*+,;=-._~")
    if params:
        target += "?" + urlencode({k: _param(v) for k, v in params.items()})
    lines = [f"{method} {target} HTTP/1.1", "Host: hutch", "Accept: */*", *extra]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    elif body is not None:
        lines.append(f"Content-Length: {len(body)}")
    elif method in ("POST", "PUT", "PATCH"):
        lines.append("Content-Length: 0")
    if content_type and (chunked or body is not None):
        lines.append(f"Content-Type: {content_type}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body; ``b""`` is the last one (an empty chunk ends it)."""
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b"0\r\n\r\n"


class _Reader:
    """Buffered reads from one connection."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.received = 0
        self.idle_since = 0.0

    async def _fill(self, size: int = READ_SIZE) -> None:
        try:
            data = await self.stream.receive(size)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            data = b""
        if not data:
            raise ConnectionResetError("the engine closed the connection")
        self.received += len(data)
        self.buffer += data

    async def until(self, marker: bytes) -> bytes:
        while (cut := self.buffer.find(marker)) < 0:
            if len(self.buffer) > 1 << 20:
                raise ProtocolError("an HTTP header line of over 1 MiB")
            await self._fill()
        line = bytes(self.buffer[:cut])
        del self.buffer[:cut + len(marker)]
        return line

    async def upto(self, size: int) -> bytes:
        """Between 1 and ``size`` bytes: what is buffered, or the next read."""
        if not self.buffer:
            await self._fill(size)
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def pieces(self, size: int) -> AsyncIterator[bytes]:
        """The next ``size`` bytes as they arrive (a 1 GiB download is never held whole)."""
        while size:
            data = await self.upto(min(size, PIECE_SIZE))
            size -= len(data)
            yield data


async def read_head(reader: _Reader) -> tuple[int, dict[str, str], bool]:
    """The status, the headers (lower-case names) and whether the connection may be kept."""
    head = (await reader.until(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    try:
        version, status_text = head[0].split(" ", 2)[:2]
        status = int(status_text)
    except ValueError:
        raise ProtocolError(f"a bad status line: {head[0][:100]!r}") from None
    headers: dict[str, str] = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    return status, headers, keep


async def body_chunks(reader: _Reader, method: str, status: int, headers: dict[str, str]
                      ) -> AsyncIterator[bytes]:
    """The body as it arrives (chunked or ``Content-Length``), until its end."""
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.until(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.until(b"\r\n"):
                    pass  # trailers
                return
            async for piece in reader.pieces(size):
                yield piece
            await reader.until(b"\r\n")
    elif "content-length" in headers:
        async for piece in reader.pieces(int(headers["content-length"])):
            yield piece
    else:
        raise ProtocolError("an answer with neither a length nor chunks")


class Pool:
    """Keep-alive connections to one Unix socket (or, for a remote engine, to ``tcp``'s
    host and port over TLS), for one event loop; ``headers`` go with every request."""

    def __init__(self, socket_path: str, *, tcp: tuple[str, int] | None = None,
                 tls: ssl.SSLContext | None = None, headers: Sequence[str] = ()) -> None:
        self.socket_path = socket_path
        self.tcp, self.tls, self.headers = tcp, tls, list(headers)
        self._idle: list[_Reader] = []
        self._closed = False

    @property
    def where(self) -> str:
        return self.socket_path if self.tcp is None else f"{self.tcp[0]}:{self.tcp[1]}"

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for reader in idle:
            await reader.stream.aclose()

    async def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                      body: Body | None = None, content_type: str | None = None) -> Response:
        """Send a request; the whole answer."""
        async with self.stream(method, path, params=params, body=body,
                               content_type=content_type) as (answer, chunks):
            answer.body = b"".join([chunk async for chunk in chunks])
        return answer

    @asynccontextmanager
    async def stream(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                     body: Body | None = None, content_type: str | None = None
                     ) -> AsyncIterator[tuple[Response, AsyncIterator[bytes]]]:
        """Send a request; yields the answer's status (``body`` empty) and an iterator over
        its body as it arrives.  A connection left before the body's end is closed."""
        if body is None or isinstance(body, bytes):
            head = encode_request(method, path, params, body, content_type,
                                  extra=self.headers)
            rest = None
        else:
            head = encode_request(method, path, params, None, content_type, chunked=True,
                                  extra=self.headers)
            rest = body
        reader, (status, headers, keep) = await self._send(head, rest)
        finished = False

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal finished
            async for chunk in body_chunks(reader, method, status, headers):
                yield chunk
            finished = True

        try:
            yield Response(status, b""), chunks()
        finally:
            if finished and keep and not reader.buffer and not self._closed \
                    and len(self._idle) < MAX_IDLE:
                reader.idle_since = time.monotonic()
                self._idle.append(reader)
            else:
                await self._discard(reader)

    async def _connect(self) -> anyio.abc.ByteStream:
        if self.tcp is None:
            return await anyio.connect_unix(self.socket_path)
        host, port = self.tcp
        try:
            with anyio.fail_after(CONNECT_TIMEOUT):
                stream = await anyio.connect_tcp(host, port, ssl_context=self.tls,
                                                 tls_standard_compatible=False) \
                    if self.tls is not None else await anyio.connect_tcp(host, port)
        except anyio.BrokenResourceError as exc:  # (a failed handshake, as anyio says it)
            raise ConnectionRefusedError(f"TLS with {host}:{port} failed: "
                                         f"{exc.__cause__ or exc}") from exc
        except TimeoutError:
            raise ConnectionRefusedError(f"{host}:{port} did not answer in "
                                         f"{CONNECT_TIMEOUT:g} s") from None
        raw = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        if raw is not None:
            _keep_alive(raw)
        return stream

    async def _discard(self, reader: _Reader) -> None:
        with anyio.CancelScope(shield=True):
            await reader.stream.aclose()

    async def _send(self, data: bytes, rest: AsyncIterable[bytes] | None = None
                    ) -> tuple[_Reader, tuple[int, dict[str, str], bool]]:
        """Send ``data`` (then ``rest``'s chunks) on an idle connection (one the engine
        closed meanwhile is replaced) or a new one; returns the connection and the answer's
        head."""
        while True:
            reader = self._idle.pop() if self._idle else None
            if reader is not None and time.monotonic() - reader.idle_since > MAX_IDLE_AGE:
                await self._discard(reader)  # (the engine may be closing it just now)
                continue
            fresh = reader is None
            if reader is None:
                try:
                    reader = _Reader(await self._connect())
                except OSError as exc:
                    raise NotSent(exc.errno, f"cannot connect to the engine at "
                                       f"{self.where}: {exc.strerror or exc}") from exc
            reader.received = 0
            sent = begun = False
            failure: Exception | None = None
            try:
                try:
                    await reader.stream.send(data)
                    if rest is not None:
                        begun = True  # the iterator cannot be read again from here on
                        failure = await _send_chunks(reader.stream, rest)
                    sent = failure is None
                except (OSError, anyio.BrokenResourceError) as exc:
                    # The engine may have answered before reading the whole body (a file
                    # write it refused) and closed: its answer is still there to read.
                    try:
                        return reader, await read_head(reader)
                    except (OSError, ProtocolError):
                        raise exc from None
                if failure is None:
                    return reader, await read_head(reader)
            except BaseException as exc:
                await self._discard(reader)
                stale = isinstance(exc, OSError | anyio.BrokenResourceError
                                   | anyio.ClosedResourceError)
                if not stale or reader.received or isinstance(exc, TimeoutError):
                    raise  # (an answer that had begun: sending again could repeat the call)
                # Writing to a Unix socket whose peer has closed fails (EPIPE): a request
                # written whole was in the engine's hands, whatever it did with it.
                if sent:
                    raise NoAnswer(f"the engine closed the connection before answering: "
                                   f"{exc}") from exc
                if begun:  # part of a streamed body went, and it cannot be sent again
                    raise ConnectionResetError(
                        f"the engine closed the connection during the request: {exc}"
                    ) from exc
                if fresh:
                    raise NotSent(exc.errno if isinstance(exc, OSError) else None,
                                  f"the engine closed a new connection: {exc}") from exc
                # an idle connection the engine closed meanwhile: the next one is tried
                continue
            # The body's own source failed (a local file vanished): the engine has part of
            # a body it will never see the end of, so the connection goes with the error.
            await self._discard(reader)
            assert failure is not None
            raise failure


async def _send_chunks(stream: anyio.abc.ByteStream, body: AsyncIterable[bytes]
                       ) -> Exception | None:
    """Send ``body`` chunked, with its last chunk; returns the error the iterator itself
    raised, if it did (a failed send raises)."""
    chunks = aiter(body)
    try:
        while True:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except Exception as exc:
                return exc
            if chunk:
                await stream.send(encode_chunk(chunk))
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()  # a body left unfinished closes its file now, not when collected
    await stream.send(encode_chunk(b""))
    return None


def _keep_alive(sock: socket.socket) -> None:
    """TCP keepalive probes after 30 s of silence, every 10 s, 3 of them: a remote engine
    whose network went away is found out in about a minute, not never (a stream of exec
    output may be silent for hours)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


class BlockingStream:
    """A connected socket behind the ``send``/``receive``/``aclose`` coroutines the pool
    awaits, none of which suspends: each blocks its thread instead.  For direct calls
    (``syncbridge.run_direct``), which run without an event loop."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    async def receive(self, max_bytes: int = READ_SIZE) -> bytes:
        return self.sock.recv(max_bytes)

    async def aclose(self) -> None:
        self.sock.close()

    def __del__(self) -> None:
        self.sock.close()  # a thread's pool goes with its thread: no warning for that


class BlockingPool(Pool):
    """A :class:`Pool` of :class:`BlockingStream` connections, for one thread; ``timeout``
    bounds each socket operation (``TimeoutError``, an ``OSError``)."""

    def __init__(self, socket_path: str, timeout: float | None = None, *,
                 tcp: tuple[str, int] | None = None, tls: ssl.SSLContext | None = None,
                 headers: Sequence[str] = ()) -> None:
        super().__init__(socket_path, tcp=tcp, tls=tls, headers=headers)
        self.timeout = timeout

    async def _connect(self) -> anyio.abc.ByteStream:
        if self.tcp is not None:
            raw = socket.create_connection(self.tcp, timeout=self.timeout or CONNECT_TIMEOUT)
            try:
                _keep_alive(raw)
                sock = self.tls.wrap_socket(raw, server_hostname=self.tcp[0]) \
                    if self.tls is not None else raw
                sock.settimeout(self.timeout)
            except BaseException:
                raw.close()
                raise
            return BlockingStream(sock)  # type: ignore[return-value]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        return BlockingStream(sock)  # type: ignore[return-value]

    async def _discard(self, reader: _Reader) -> None:
        await reader.stream.aclose()
