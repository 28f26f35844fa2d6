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
3. the first request must carry ``Authorization: Bearer <token>`` of a client not revoked,
   the client the certificate was issued to; otherwise it is answered ``401`` (an
   ``unauthorized`` error body, which the SDK raises as :class:`hutch.exception.AuthError`),
   logged with the peer's address, and closed.

All three within :data:`ADMISSION_TIMEOUT`, at most :data:`MAX_ADMITTING` connections at
once (:data:`MAX_ADMITTING_PER_PEER` from one address).  Then the connection is relayed to
the engine's socket both ways, unchanged: streams (exec output, logs, file transfers) flow
as they do locally.  Later requests on the same connection come from the same
authenticated TLS peer, and every :data:`RECHECK_EVERY` seconds the open connections are
checked against the stored tokens: a revoked client's end.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import re
import resource
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

#: Seconds a connection has from its accept to the end of its first request's head: the
#: first byte, the TLS handshake and the head together.
ADMISSION_TIMEOUT = 10.0
#: Largest first request head read before the engine sees it.
MAX_HEAD = 64 * 1024
#: Connections being admitted at once, in all and from one address; past either a new
#: connection is closed at once, not queued (one kept waiting holds a descriptor, and a
#: peer that opens many and sends nothing would shut everyone else out).
MAX_ADMITTING = 128
MAX_ADMITTING_PER_PEER = 16
#: Admitted connections served at once (past it: a 503).
MAX_CONNECTIONS = 512
#: Seconds between checks of the open connections against the stored tokens: a client
#: revoked (or issued again) loses its open connections within this.
RECHECK_EVERY = 2.0
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
class _Admitted:
    tls: trio.SSLStream[Any]
    head: bytes
    client: str
    digest: str


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
        self.admitting = 0
        self.admitting_from: collections.Counter[str] = collections.Counter()
        #: Each admitted connection's cancel scope, with its token's hash.
        self.live: dict[trio.CancelScope, str] = {}
        self.admitted = 0

    async def serve(self, host: str, port: int,
                    task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        _raise_descriptor_limit()
        listeners = await trio.open_tcp_listeners(port, host=host)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._recheck)
            task_status.started([ln.socket.getsockname() for ln in listeners])
            await trio.serve_listeners(self.handle, listeners)

    async def _recheck(self) -> None:
        """End the open connections of clients revoked (or issued again) since."""
        while True:
            await trio.sleep(RECHECK_EVERY)
            try:
                kept = await trio.to_thread.run_sync(credentials.stored, self.data_dir)
            except OSError as exc:
                log.warning("cannot read the clients' tokens: %s", exc)
                continue
            for scope, digest in list(self.live.items()):
                if digest not in kept:
                    log.info("ending a connection of a revoked client")
                    scope.cancel()

    async def handle(self, raw: trio.abc.Stream) -> None:
        peer = _peer(raw)
        try:
            if self.admitting >= MAX_ADMITTING or \
                    self.admitting_from[peer] >= MAX_ADMITTING_PER_PEER:
                return  # closed at once: a connection kept waiting holds a descriptor
            self.admitting += 1
            self.admitting_from[peer] += 1
            admitted = None
            try:
                with trio.move_on_after(ADMISSION_TIMEOUT):
                    admitted = await self._admit(raw, peer)
            finally:
                self.admitting -= 1
                self.admitting_from[peer] -= 1
                if not self.admitting_from[peer]:
                    del self.admitting_from[peer]
            if admitted is None:
                return
            if len(self.live) >= MAX_CONNECTIONS:
                await _answer(admitted.tls, 503, "resource_exhausted",
                              f"the gateway serves {MAX_CONNECTIONS} connections at once")
                return
            with trio.CancelScope() as scope:
                self.live[scope] = admitted.digest
                try:
                    await self._relay(admitted)
                finally:
                    del self.live[scope]
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError,
                ssl.SSLError) as exc:
            log.debug("a connection from %s ended: %r", peer, exc)
        except Exception:  # one connection's fault must not end the gateway
            log.exception("a connection from %s failed", peer)
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(raw)

    async def _admit(self, raw: trio.abc.Stream, peer: str) -> _Admitted | None:
        """The three steps of the module's docstring, or None (answered, or closed)."""
        first = await raw.receive_some(1)
        if not first:
            return None
        if first[0] != TLS_HANDSHAKE:
            if first.isalpha():
                await _answer(raw, 400, "invalid", "this hutch engine speaks HTTPS only: "
                              "set HUTCH_ENGINE=https://HOST:PORT with its credentials")
            return None
        tls = trio.SSLStream(_Replay(first, raw), self.context, server_side=True,
                             https_compatible=True)
        await tls.do_handshake()
        received = await self._first_head(tls)
        if received is None:
            return None
        try:
            token = _token(received)
        except BadRequest as bad:
            await _answer(tls, bad.status, "invalid", bad.reason)
            return None
        try:
            kept = credentials.stored(self.data_dir)
        except OSError as exc:
            log.warning("cannot read the clients' tokens: %s", exc)
            await _answer(tls, 503, "engine", "the gateway cannot read its clients' tokens "
                          "now: try again")
            return None
        client = credentials.owner(kept, token or "")
        named = _certificate_name(tls)
        if token is None or client is None or client != named:
            log.warning("refused %s (certificate %r): %s", peer, named,
                        "no token" if token is None else "a token not of that client"
                        if client is not None else "an unknown or revoked token")
            await _answer(tls, 401, "unauthorized",
                          "the hutch engine refused the token: it is missing, wrong or "
                          "revoked (`hutch engine remote-credentials` issues a new one)")
            return None
        return _Admitted(tls, received, client, credentials.digest(token))

    async def _first_head(self, tls: trio.SSLStream[Any]) -> bytes | None:
        """Everything read up to the end of the first request's head (it may hold the
        start of a body), or None: the client left, or sent a head too large (431)."""
        buffer = bytearray()
        while buffer.find(b"\r\n\r\n") < 0:  # (a scan per record: at most 64 KiB)
            if len(buffer) > MAX_HEAD:
                await _answer(tls, 431, "invalid", "the request head is too large")
                return None
            data = await tls.receive_some(65536)
            if not data:
                return None
            buffer += data
        return bytes(buffer)

    async def _relay(self, admitted: _Admitted) -> None:
        engine = await self._engine()
        if engine is None:
            await _answer(admitted.tls, 503, "engine", "the hutch engine behind this gateway "
                          "is not running and could not be started (see its engine.log)")
            return
        self.admitted += 1
        log.debug("client %s connected (%d so far)", admitted.client, self.admitted)
        async with engine:
            await engine.send_all(admitted.head)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(relay, admitted.tls, engine)
                nursery.start_soon(relay, engine, admitted.tls)

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


def _token(received: bytes) -> str | None:
    """The bearer token of the first request, or None (no ``Authorization``, another
    scheme); :class:`BadRequest` for a head the engine would refuse too."""
    head = take_head(bytearray(received))
    if head is None:
        raise BadRequest(400, "no request head")
    request = parse_head(head)
    for name, value in request.headers:
        if name == b"authorization":
            match = _BEARER.match(value)
            return match.group(1).decode() if match else None
    return None


def _certificate_name(tls: trio.SSLStream[Any]) -> str | None:
    """The common name of the client's certificate (the client it was issued to)."""
    cert = tls.getpeercert()
    for rdn in cert.get("subject", ()) if cert else ():
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def _peer(raw: trio.abc.Stream) -> str:
    sock = getattr(raw, "socket", None)
    try:
        return str(sock.getpeername()[0]) if sock is not None else "?"
    except OSError:
        return "?"


def _raise_descriptor_limit() -> None:
    """Each connection holds two descriptors (the client's, the engine's): take the hard
    limit, not the usual soft 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
