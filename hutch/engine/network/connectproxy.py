"""Sandbox connect tokens (Modal's ``sb.create_connect_token``): an HTTPS listener that lets
a request through to a sandbox port only with a token its owner made, and tells the
sandbox's server which token it was.

How Modal's work, and so these: the client sends ``Authorization: Bearer TOKEN`` (or
``?_modal_connect_token=TOKEN``); the sandbox's server gets the request without the token
and with ``X-Verified-User-Data: <the token's user_metadata>``, a header no client can set
(one it sends is removed).  Why one request per connection (``Connection: close`` is sent
upstream, and the connection ends with the server's answer): the header must be the
verified one on *every* request, and after the first one of a keep-alive connection the
proxy could only tell where the next begins by parsing the server's answers too.  A
WebSocket upgrade (status 101) turns the connection into a plain relay both ways, as it
must; an upgrade the server refuses ends it.  Request bodies need a ``Content-Length``
(411 for chunked ones: their end could only be found by parsing them).  Request heads are
parsed by the engine's own strict parser (:mod:`hutch.engine.httpd.parse`), which refuses
the ambiguous forms request smuggling relies on.  Tokens are kept as SHA-256 digests.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import trio

from hutch.engine.httpd import parse
from hutch.engine.network.tlsproxy import TunnelEndpoint, answer_status, guarded, relay

log = logging.getLogger("hutch.tls")

TOKEN_PARAM = b"_modal_connect_token"
VERIFIED_HEADER = b"X-Verified-User-Data"
#: Seconds a client has to send its request head.
HEAD_WAIT = 30.0
#: Largest response head of a server answering an upgrade.
MAX_RESPONSE_HEAD = 64 * 1024


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _token(request: parse.Request) -> tuple[str | None, bytes, bool]:
    """The token the request carries, its target without the token parameter, and whether
    it came in the Authorization header."""
    for name, value in request.headers:
        scheme, _, token = value.partition(b" ")
        if name == b"authorization" and scheme.lower() == b"bearer" and token.strip():
            return token.strip().decode("latin-1"), request.target, True
    path, sep, query = request.target.partition(b"?")
    found: str | None = None
    kept = []
    for piece in query.split(b"&") if sep else []:
        key, _, value = piece.partition(b"=")
        if key == TOKEN_PARAM:
            found = found or value.decode("latin-1")
        else:
            kept.append(piece)
    return found, path + (b"?" + b"&".join(kept) if kept else b""), False


def _is_upgrade(request: parse.Request) -> bool:
    """A WebSocket upgrade: the one kind let through (``h2c`` would turn the connection
    into HTTP/2 requests the engine does not read, each with a header of the client's)."""
    connection = {token.strip().lower() for n, v in request.headers if n == b"connection"
                  for token in v.split(b",")}
    upgrades = [v.strip().lower() for n, v in request.headers if n == b"upgrade"]
    return b"upgrade" in connection and upgrades == [b"websocket"]


#: Headers the engine writes itself (by name as sent; ``_`` read as ``-``, as CGI-style
#: servers read it): the verified one, the framing, and the connection's options.
_OWN = {b"x-verified-user-data", b"content-length", b"transfer-encoding", b"connection",
        b"keep-alive", b"upgrade", b"http2-settings", b"proxy-connection", b"te"}


def rewrite(request: parse.Request, target: bytes, from_header: bool,
            metadata: str | None, upgrade: bool) -> bytes:
    """The head sent to the sandbox: the token out; the verified header, the body's
    length and the connection's options as the engine writes them (``Connection: close``,
    or a WebSocket upgrade); nothing of the client's under those names."""
    lines = [b"%s %s HTTP/%s" % (request.method.encode(), target, request.version.encode())]
    for name, value in request.headers:
        if name.replace(b"_", b"-") in _OWN or (name == b"authorization" and from_header):
            continue
        lines.append(name + b": " + value)
    if metadata is not None:
        lines.append(VERIFIED_HEADER + b": " + metadata.encode())
    if request.content_length or request.method in ("POST", "PUT", "PATCH"):
        lines.append(b"Content-Length: %d" % request.content_length)
    lines += [b"Upgrade: websocket", b"Connection: Upgrade"] if upgrade else \
        [b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


@dataclass(frozen=True)
class ConnectEndpoint(TunnelEndpoint):
    """A tunnel that checks tokens: ``tokens`` maps a token's digest to its metadata."""

    tokens: dict[str, str | None] = field(default_factory=dict)

    async def handle(self, client: trio.abc.Stream) -> None:
        async with guarded(client) as streams:
            await self._exchange(client, streams)

    async def _exchange(self, client: trio.abc.Stream, streams: list[trio.abc.Stream]
                        ) -> None:
        buffer = bytearray()
        try:
            with trio.fail_after(HEAD_WAIT):
                scanned = 0  # (a head sent a byte at a time is not searched again each time)
                while True:
                    ended = buffer.find(b"\r\n\r\n", max(0, scanned - 3)) >= 0
                    if (ended or len(buffer) > parse.MAX_HEAD) and \
                            (head := parse.take_head(buffer)) is not None:
                        break
                    scanned = len(buffer)
                    data = await client.receive_some(65536)
                    if not data:
                        return
                    buffer += data
            request = parse.parse_head(head)
        except parse.BadRequest as exc:
            await answer_status(client, exc.status, exc.reason)
            return
        token, target, from_header = _token(request)
        if token is None or digest(token) not in self.tokens:
            await answer_status(client, 401, "a valid connect token is needed: "
                                "Authorization: Bearer TOKEN, or ?_modal_connect_token=TOKEN")
            return
        if request.chunked:
            await answer_status(client, 411, "a request body needs a Content-Length here")
            return
        upgrade = _is_upgrade(request)
        head = rewrite(request, target, from_header, self.tokens[digest(token)], upgrade)
        try:
            upstream = await self.connect()
        except (OSError, trio.TooSlowError):
            await answer_status(client, 502, "the sandbox's port is not accepting "
                                "connections (yet)")
            return
        streams.append(upstream)
        self.connections(+1)  # activity: only a request with a valid token
        try:
            await self._forward(client, upstream, head, buffer, request, upgrade)
        finally:
            self.connections(-1)

    async def _forward(self, client: trio.abc.Stream, upstream: trio.abc.Stream, head: bytes,
                       buffer: bytearray, request: parse.Request, upgrade: bool) -> None:
        await upstream.send_all(head)
        switched = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._request_body, client, upstream, buffer,
                               request.content_length, switched if upgrade else None)
            await self._answer(upstream, client, upgrade, switched)
            nursery.cancel_scope.cancel()

    @staticmethod
    async def _request_body(client: trio.abc.Stream, upstream: trio.abc.Stream,
                            buffer: bytearray, length: int,
                            switched: trio.Event | None) -> None:
        """Send the body (``length`` bytes), then, after a switch of protocols, whatever
        the client sends; nothing else."""
        first, rest = bytes(buffer[:length]), bytes(buffer[length:])
        if first:
            await upstream.send_all(first)
        left = length - len(first)
        while left > 0:
            data = await client.receive_some(min(left, 65536))
            if not data:
                return
            await upstream.send_all(data[:left])
            left -= len(data)
        if switched is None:
            return
        await switched.wait()
        if rest:
            await upstream.send_all(rest)
        await relay(client, upstream)

    @staticmethod
    async def _answer(upstream: trio.abc.Stream, client: trio.abc.Stream, upgrade: bool,
                      switched: trio.Event) -> None:
        """Relay the server's answer until it closes; for an upgrade, read its head first:
        after a 101 the client's bytes go through, and after anything else the answer
        ends at the end of its body (the server may keep the connection open)."""
        if not upgrade:
            await relay(upstream, client)  # until the server closes (Connection: close)
            return
        reader = _Reader(upstream)
        head = await reader.until(b"\r\n\r\n", MAX_RESPONSE_HEAD)
        await client.send_all(head)
        if head.startswith((b"HTTP/1.1 101", b"HTTP/1.0 101")):
            switched.set()
            if reader.buffer:
                await client.send_all(bytes(reader.buffer))
            await relay(upstream, client)
            return
        await _response_body(reader, client, head)


class _Reader:
    """Reads a stream up to markers, keeping what came after them."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def until(self, marker: bytes, limit: int) -> bytes:
        """Everything up to and including ``marker`` (or all there is, at the end or past
        ``limit`` bytes)."""
        scanned = 0
        while (end := self.buffer.find(marker, max(0, scanned - len(marker) + 1))) < 0 \
                and len(self.buffer) < limit:
            scanned = len(self.buffer)
            data = await self.stream.receive_some(65536)
            if not data:
                end = len(self.buffer) - len(marker)
                break
            self.buffer += data
        taken = bytes(self.buffer[:end + len(marker)]) if end >= 0 else bytes(self.buffer)
        del self.buffer[:len(taken)]
        return taken

    async def exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            data = await self.stream.receive_some(65536)
            if not data:
                break
            self.buffer += data
        taken = bytes(self.buffer[:count])
        del self.buffer[:count]
        return taken


async def _response_body(reader: _Reader, client: trio.abc.Stream, head: bytes) -> None:
    """Relay the body of the answer whose ``head`` was sent (by its Content-Length, its
    chunks, or until the server closes)."""
    fields = {name.strip().lower(): value.strip() for name, _, value in
              (line.partition(b":") for line in head.split(b"\r\n")[1:]) if value}
    if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
        while True:
            line = await reader.until(b"\r\n", parse.MAX_LINE)
            await client.send_all(line)
            try:
                size = parse.chunk_size(line.rstrip(b"\r\n"))
            except parse.BadRequest:
                return
            if size == 0:  # then trailer fields, to an empty line
                while (line := await reader.until(b"\r\n", parse.MAX_LINE)) not in (
                        b"\r\n", b""):
                    await client.send_all(line)
                await client.send_all(line)
                return
            while size > 0:  # in pieces: a server may announce any size
                data = await reader.exactly(min(size, 65536))
                if not data:
                    return
                await client.send_all(data)
                size -= len(data)
            await client.send_all(await reader.exactly(2))
    elif fields.get(b"content-length", b"").isdigit():
        left = int(fields[b"content-length"])
        while left > 0:
            data = await reader.exactly(min(left, 65536))
            if not data:
                return
            await client.send_all(data)
            left -= len(data)
    else:
        if reader.buffer:
            await client.send_all(bytes(reader.buffer))
        await relay(reader.stream, client)
