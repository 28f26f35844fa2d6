"""Tunnels: the engine's listeners for sandbox ports, with TLS for ``encrypted_ports``.

The CA (``<data>/ca/ca.crt``, printed by ``hutch engine ca``) and a server certificate for
127.0.0.1 and localhost signed by it are made once with the ``openssl`` command.  For each
forwarded port the engine listens on an ephemeral port of 127.0.0.1 (with TLS for an
encrypted one) and relays each connection to the port on the sandbox's own loopback
(:func:`hutch.engine.network.netns.connect`), counting connections as the sandbox's activity.
That listener is the one way in: nothing else listens on the host for the port, so an
encrypted port has no plain-text path.  Clients that trust the CA get a verified
``https://127.0.0.1:<port>``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import trio

from hutch.engine.errors import EngineError

log = logging.getLogger("hutch.tls")


class CertificateError(EngineError):
    pass


#: The CA may sign for these names only (X.509 name constraints, which TLS clients
#: enforce): the SDK makes programs trust it (``hutch.sdk.catrust``), and a CA that could
#: sign for any host would let whoever obtained its key impersonate every site to them.
NAME_CONSTRAINTS = ("nameConstraints=critical,permitted;IP:127.0.0.1/255.255.255.255,"
                    "permitted;DNS:localhost")
#: Marks a CA made with those constraints (one made before them is replaced).
CONSTRAINED = ".constrained"


#: One maker of the CA at a time: creates run :func:`sandbox_trust` on worker threads, and
#: two makers at once left a server key that did not match its certificate.
_MAKING = threading.RLock()


def ensure_ca(data_dir: Path) -> Path:
    """The engine's CA directory, with ``ca.crt``, ``server.crt`` and ``server.key``."""
    with _MAKING:
        return _ensure_ca(data_dir)


def _ensure_ca(data_dir: Path) -> Path:
    ca = data_dir / "ca"
    if (ca / "server.crt").exists() and (ca / CONSTRAINED).exists():
        return ca
    ca.mkdir(mode=0o700, exist_ok=True)
    for old in ("server.crt", "ca.crt", "ca.key", "ca.srl"):  # an unconstrained CA goes
        (ca / old).unlink(missing_ok=True)

    def openssl(*args: str) -> None:
        result = subprocess.run(["openssl", *args], cwd=ca, capture_output=True, text=True)
        if result.returncode != 0:
            raise CertificateError(f"openssl {args[0]} failed: {result.stderr.strip()}")

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-days", "3650", "-subj", "/CN=hutch local CA",
            "-addext", NAME_CONSTRAINTS, "-keyout", "ca.key", "-out", "ca.crt")
    openssl("req", "-new", *ec, "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
            "-out", "server.csr", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "825", "-copy_extensions", "copy",
            "-out", "server.crt.tmp")
    (ca / "server.crt.tmp").rename(ca / "server.crt")
    (ca / CONSTRAINED).touch()
    return ca


#: The host's CA bundle with the engine's CA after it, which sandboxes that reach the
#: tunnels (:mod:`hutch.engine.network.tunnelmirrors`) trust as their system's.
SANDBOX_TRUST = "sandboxes.crt"


def sandbox_trust(data_dir: Path, host_bundle: Path) -> Path:
    """The bundle a sandbox that reaches the tunnels trusts (remade when the host's bundle
    or the CA changed: by modification time, size or inode, so a bundle put back with an
    older time is seen too): a tunnel's ``https://127.0.0.1:<port>`` verifies there as on
    the host, and the CA's name constraints keep it from vouching for anything else."""
    with _MAKING:
        return _sandbox_trust(data_dir, host_bundle)


def _sandbox_trust(data_dir: Path, host_bundle: Path) -> Path:
    ca = ensure_ca(data_dir)
    bundle = ca / SANDBOX_TRUST
    host, own = host_bundle.stat(), (ca / "ca.crt").stat()
    source = f"{host.st_mtime_ns} {host.st_size} {host.st_ino} {own.st_mtime_ns}\n"
    made_from = ca / (SANDBOX_TRUST + ".from")
    with contextlib.suppress(FileNotFoundError):
        if bundle.exists() and made_from.read_text() == source:
            return bundle
    staged = ca / f".{SANDBOX_TRUST}.{os.getpid()}.{threading.get_ident()}"
    staged.write_bytes(host_bundle.read_bytes().rstrip(b"\n") + b"\n"
                       + (ca / "ca.crt").read_bytes())
    staged.chmod(0o644)
    os.replace(staged, bundle)
    made_from.write_text(source)
    return bundle


async def trust_for_sandbox(data_dir: Path, host_bundle: Path = Path(
        "/etc/ssl/certs/ca-certificates.crt")) -> Path | None:
    """:func:`sandbox_trust` off the event loop (the CA may be made now); None where the
    host has no bundle."""
    if not host_bundle.is_file():
        return None
    made = _made_trust(data_dir, host_bundle)  # (the usual case: a few stats, no thread)
    if made is not None:
        return made
    return await trio.to_thread.run_sync(sandbox_trust, data_dir, host_bundle)


def _made_trust(data_dir: Path, host_bundle: Path) -> Path | None:
    """The sandbox bundle if it is made and up to date, else None (read only: whatever a
    maker does meanwhile, a mismatch sends the caller to :func:`sandbox_trust`)."""
    ca = data_dir / "ca"
    bundle = ca / SANDBOX_TRUST
    try:
        host, own = host_bundle.stat(), (ca / "ca.crt").stat()
        source = f"{host.st_mtime_ns} {host.st_size} {host.st_ino} {own.st_mtime_ns}\n"
        if (ca / CONSTRAINED).exists() and bundle.exists() and \
                (ca / (SANDBOX_TRUST + ".from")).read_text() == source:
            return bundle
    except OSError:
        pass
    return None


def server_context(ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(ca / "server.crt", ca / "server.key")
    return context


async def relay(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        try:
            await sink.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


#: How long a client whose sandbox port is not listening has to send an HTTP request
#: line (then it is answered 502); bytes read to find it.
REQUEST_LINE_WAIT = 2.0
REQUEST_LINE_BYTES = 8192
_REQUEST_LINE = re.compile(rb"[A-Z]{3,10} \S+ HTTP/1\.[01]\r?\n")


async def answer_status(client: trio.abc.Stream, status: int, text: str) -> None:
    """Answer an HTTP request with ``status`` and ``text``, then close."""
    body = text.encode() + b"\n"
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: text/plain\r\n"
            f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await client.send_all(head + body)


async def answer_unavailable(client: trio.abc.Stream) -> None:
    """Close a connection whose sandbox port does not answer; an HTTP client first gets a
    502, as Modal's proxy answers before a sandbox's server listens (a retry loop that
    catches ``urllib.error.URLError`` sees an ``HTTPError``, not a reset).  Other clients
    (a raw TCP protocol) are closed on after ``REQUEST_LINE_WAIT`` seconds."""
    try:
        head = b""
        with trio.move_on_after(REQUEST_LINE_WAIT):
            while b"\n" not in head and len(head) < REQUEST_LINE_BYTES:
                data = await client.receive_some(REQUEST_LINE_BYTES - len(head))
                if not data:
                    break
                head += data
        if _REQUEST_LINE.match(head):
            await answer_status(client, 502,
                                "the sandbox's port is not accepting connections (yet)")
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(client)


@contextlib.asynccontextmanager
async def guarded(client: trio.abc.Stream, connections: Callable[[int], None] | None = None
                  ) -> AsyncIterator[list[trio.abc.Stream]]:
    """The frame of one tunnel connection: nothing but cancellation leaves it (an error
    escaping a handler would end the engine's nursery, and with it the daemon), and the
    client and every stream added to the list are closed at its end, whatever happened
    (a stream left open would be a descriptor lost per connection).  ``connections`` is
    told of the start (+1) and the end (-1)."""
    streams: list[trio.abc.Stream] = [client]
    if connections is not None:
        connections(+1)
    try:
        yield streams
    except BaseException as exc:
        cancelled, failed = _split_cancellation(exc)
        if failed is not None:
            log.info("a tunnel connection ended: %r", failed)
        if cancelled is not None:
            raise cancelled from None
    finally:
        if connections is not None:
            connections(-1)
        with trio.CancelScope(shield=True):
            for stream in reversed(streams):
                await trio.aclose_forcefully(stream)


def _split_cancellation(exc: BaseException) -> tuple[BaseException | None,
                                                       BaseException | None]:
    """(the cancellation in ``exc``, the rest); a KeyboardInterrupt or SystemExit counts
    as cancellation (it must go on)."""
    keep = (trio.Cancelled, KeyboardInterrupt, SystemExit)
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(keep)
    return (exc, None) if isinstance(exc, keep) else (None, exc)


#: Connections one tunnel serves at a time (more are closed at once).
MAX_CONNECTIONS = 512
#: Seconds a client has to finish its TLS handshake.
HANDSHAKE_WAIT = 30.0


@dataclass(frozen=True)
class TunnelEndpoint:
    """What every listener of one tunnel shares: the host's and those inside other
    sandboxes (:mod:`hutch.engine.network.tunnelmirrors`).  ``connect()`` opens a stream to
    the sandbox's port; ``connections(+1)``/``(-1)`` report each connection's start and end
    (activity for ``idle_timeout``); ``done`` is set when the sandbox has ended."""

    context: ssl.SSLContext | None
    connect: Callable[[], Awaitable[trio.abc.Stream]]
    done: trio.Event
    connections: Callable[[int], None]
    #: connections open now (a list: the endpoint is frozen, the count is not)
    open_now: list[int] = field(default_factory=lambda: [0], compare=False)

    def wrap(self, listener: trio.SocketListener) -> trio.abc.Listener[Any]:
        """``listener`` with TLS for an encrypted port."""
        if self.context is None:
            return listener
        return trio.SSLListener(listener, self.context)

    async def handle(self, client: trio.abc.Stream) -> None:
        """Relay one connection to the sandbox's port (a 502 while nothing listens)."""
        async with guarded(client, self.connections) as streams:
            if isinstance(client, trio.SSLStream):
                # First, and alone: trio's handshake, begun by two relays at once, leaves
                # the second waiting forever when the first fails (a client gone).
                with trio.move_on_after(HANDSHAKE_WAIT) as waited:
                    await client.do_handshake()
                if waited.cancelled_caught:
                    return
            try:
                upstream = await self.connect()
            except (OSError, trio.TooSlowError):  # nothing listens, or it never accepts
                await answer_unavailable(client)
                return
            streams.append(upstream)
            async with trio.open_nursery() as relays:
                relays.start_soon(relay, client, upstream)
                relays.start_soon(relay, upstream, client)

    async def _admit(self, client: trio.abc.Stream) -> None:
        await _admit_into(self, client)

    async def serve(self, listeners: list[trio.abc.Listener[Any]],
                    *also_until: trio.Event) -> None:
        """Serve ``listeners`` until the sandbox ends (or one of ``also_until`` is set)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._admit, listeners)
            async with trio.open_nursery() as waits:
                for event in (self.done, *also_until):
                    waits.start_soon(_cancel_when_set, event, waits.cancel_scope)
            nursery.cancel_scope.cancel()


async def _admit_into(endpoint: TunnelEndpoint, client: trio.abc.Stream) -> None:
    """Handle ``client`` unless ``MAX_CONNECTIONS`` are open already (then close it): each
    costs the engine two descriptors, and sandboxes reach the listeners too."""
    if endpoint.open_now[0] >= MAX_CONNECTIONS:
        await trio.aclose_forcefully(client)
        return
    endpoint.open_now[0] += 1
    try:
        await endpoint.handle(client)
    finally:
        endpoint.open_now[0] -= 1


async def _cancel_when_set(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def serve_tunnel(endpoint: TunnelEndpoint, port: int = 0,
                       task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Listen on 127.0.0.1 of the host for ``endpoint`` until its sandbox ends: on ``port``
    (a restarted daemon's, so that URLs handed out stay good) where it is free, else on an
    ephemeral one; the port is reported via ``task_status``."""
    try:
        plain = await trio.open_tcp_listeners(port, host="127.0.0.1")
    except OSError:
        if not port:
            raise
        plain = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(plain[0].socket.getsockname()[1])
    await endpoint.serve([endpoint.wrap(listener) for listener in plain])
