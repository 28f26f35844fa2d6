"""``hutch engine serve --listen tcp://ADDR:PORT``: the engine's API over TLS, for an SDK on
another machine (a laptop on macOS, a CI runner), as ``podman system service tcp://`` and a
``DOCKER_HOST`` with TLS serve theirs.

A gateway in front of the engine's Unix socket, in a process of its own, rather than a
second listener inside the daemon: the daemon's one event loop serves every sandbox, and
TLS (handshakes, record crypto) would take its time from them; and the code that meets
the network (OpenSSL, this module) runs apart from the process that holds the sandboxes.
It is off unless started, and binds only where told.

Each connection is admitted in three steps, each bounded in time and size, before any
byte reaches the engine:

1. a plain-HTTP client (its first byte is a letter, where TLS begins with a handshake
   record, 0x16) is answered ``400`` saying to use ``https://``, then closed;
2. the TLS handshake requires a client certificate of the engine's remote CA
   (:mod:`.credentials`): without one the connection ends in the handshake;
3. the first request must carry ``Authorization: Bearer <token>`` of a client not revoked;
   otherwise it is answered ``401`` (an ``unauthorized`` error body, which the SDK raises
   as :class:`hutch.exception.AuthError`) and closed.

Then the connection is relayed to the engine's socket both ways, unchanged: streams
(exec output, logs, file transfers) flow as they do locally.  Later requests on the same
connection come from the same authenticated TLS peer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import trio

from hutch.engine.httpd.parse import BadRequest, parse_head, take_head
from hutch.engine.network.tlsproxy import relay
from hutch.engine.remote import credentials

log = logging.getLogger("hutch.remote")

#: Seconds a connection has for its TLS handshake, and then for its first request's head.
HANDSHAKE_TIMEOUT = 10.0
HEAD_TIMEOUT = 10.0
#: Largest first request head read before the engine sees it.
MAX_HEAD = 64 * 1024
#: Connections served at once (more wait in the kernel's accept queue).
MAX_CONNECTIONS = 512
_BEARER = re.compile(rb"Bearer[ \t]+([A-Za-z0-9._~+/=-]{1,512})\Z", re.IGNORECASE)
#: Where a TLS connection begins: a handshake record.
TLS_HANDSHAKE = 0x16


def parse_listen(address: str) -> tuple[str, int]:
    """``tcp://HOST:PORT`` (``[::1]:PORT`` for IPv6) as a host and a port."""
    match = re.fullmatch(r"tcp://(\[[0-9A-Fa-f:.]+\]|[^:/\[\]]+):([0-9]{1,5})", address)
    if match is None or not 0 < int(match.group(2)) < 65536:
        raise ValueError(f"--listen takes tcp://HOST:PORT, got {address!r}")
    return match.group(1).strip("[]"), int(match.group(2))


def server_context(remote: Path) -> ssl.SSLContext:
    """TLS 1.2 or later, a client certificate of the remote CA required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(remote / "ca.crt"))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(remote / "server.crt", remote / "server.key")
    return context


class _Replay(trio.abc.Stream):
    """A stream whose first bytes were already read (to tell TLS from plain HTTP)."""

    def __init__(self, first: bytes | bytearray, stream: trio.abc.Stream) -> None:
        self.first, self.stream = bytes(first), stream

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.first:
            data, self.first = self.first, b""
            return data
        return bytes(await self.stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        await self.stream.aclose()


async def _answer(stream: trio.abc.Stream, status: int, kind: str, message: str) -> None:
    body = json.dumps({"type": kind, "message": message}).encode()
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            f"Content-Type: application/json\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await stream.send_all(head + body)


@dataclass
class Gateway:
    """The gateway of one engine: its data directory (credentials) and socket."""

    data_dir: Path
    engine_socket: Path
    #: Called (in a thread) when the engine's socket refuses: starts the engine.
    start_engine: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self.remote = credentials.remote_dir(self.data_dir)
        self.context = server_context(self.remote)
        self.limit = trio.CapacityLimiter(MAX_CONNECTIONS)
        self.admitted = 0

    async def serve(self, host: str, port: int,
                    task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        task_status.started([ln.socket.getsockname() for ln in listeners])
        await trio.serve_listeners(self.handle, listeners)

    async def handle(self, raw: trio.abc.Stream) -> None:
        async with self.limit:
            try:
                await self._handle(raw)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError,
                    ssl.SSLError) as exc:
                log.info("a connection ended: %r", exc)
            except Exception:  # one connection's fault must not end the gateway
                log.exception("a connection failed")
            finally:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(raw)

    async def _handle(self, raw: trio.abc.Stream) -> None:
        with trio.move_on_after(HANDSHAKE_TIMEOUT) as waited:
            first = await raw.receive_some(1)
        if waited.cancelled_caught or not first:
            return
        if first[0] != TLS_HANDSHAKE:
            if first.isalpha():
                await _answer(raw, 400, "invalid", "this hutch engine speaks HTTPS only: "
                              "set HUTCH_ENGINE=https://HOST:PORT with its credentials")
            return
        tls = trio.SSLStream(_Replay(first, raw), self.context, server_side=True,
                             https_compatible=True)
        with trio.move_on_after(HANDSHAKE_TIMEOUT) as waited:
            await tls.do_handshake()
        if waited.cancelled_caught:
            return
        head = await self._first_head(tls)
        if head is None:
            return
        who = self._client(head)
        if who is None:
            await _answer(tls, 401, "unauthorized",
                          "the hutch engine refused the token: it is missing, wrong or "
                          "revoked (`hutch engine remote-credentials` issues a new one)")
            return
        await self._relay(tls, head, who)

    async def _first_head(self, tls: trio.SSLStream[Any]) -> bytes | None:
        """Everything read up to the end of the first request's head, or None when the
        client sent none in time (it is closed) or sent one too big or malformed (it is
        answered 400 or 431 first)."""
        buffer = bytearray()
        with trio.move_on_after(HEAD_TIMEOUT):
            while take_head(bytearray(buffer)) is None:
                if len(buffer) > MAX_HEAD:
                    await _answer(tls, 431, "invalid", "the request head is too large")
                    return None
                data = await tls.receive_some(65536)
                if not data:
                    return None
                buffer += data
            return bytes(buffer)
        return None

    def _client(self, received: bytes) -> str | None:
        head = take_head(bytearray(received))
        assert head is not None
        try:
            request = parse_head(head)
        except BadRequest:
            return None
        for name, value in request.headers:
            if name == b"authorization":
                match = _BEARER.match(value)
                if match is None:
                    return None
                return credentials.client_of(self.data_dir, match.group(1).decode())
        return None

    async def _relay(self, tls: trio.SSLStream[Any], head: bytes, who: str) -> None:
        engine = await self._engine()
        if engine is None:
            await _answer(tls, 503, "engine", "the hutch engine behind this gateway is not "
                          "running and could not be started (see its engine.log)")
            return
        self.admitted += 1
        log.info("client %s connected (%d so far)", who, self.admitted)
        async with engine:
            await engine.send_all(head)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(relay, tls, engine)
                nursery.start_soon(relay, engine, tls)

    async def _engine(self) -> trio.SocketStream | None:
        for attempt in (1, 2):
            try:
                return await trio.open_unix_socket(str(self.engine_socket))
            except OSError as exc:
                if attempt == 2 or self.start_engine is None:
                    log.warning("cannot reach the engine at %s: %s", self.engine_socket, exc)
                    return None
                try:
                    await trio.to_thread.run_sync(self.start_engine)
                except Exception as failed:  # (said in the 503 and logged here)
                    log.warning("the engine did not start: %s", failed)
                    return None
        return None
