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

import logging
import re
import ssl
import subprocess
from collections.abc import Awaitable, Callable
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


def ensure_ca(data_dir: Path) -> Path:
    """The engine's CA directory, with ``ca.crt``, ``server.crt`` and ``server.key``."""
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


def server_context(ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(ca / "server.crt", ca / "server.key")
    return context


async def _relay(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
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
_UNAVAILABLE = (b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s")


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
            body = b"the sandbox's port is not accepting connections (yet)\n"
            await client.send_all(_UNAVAILABLE % (len(body), body))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(client)


async def serve_tunnel(context: ssl.SSLContext | None,
                       connect: Callable[[], Awaitable[trio.abc.Stream]], done: trio.Event,
                       connections: Callable[[int], None],
                       task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Listen on an ephemeral 127.0.0.1 port (reported via ``task_status``), with TLS when
    ``context`` is given, and relay each connection to a stream ``connect()`` opens to the
    sandbox's port, until ``done`` is set.  ``connections(+1)``/``(-1)`` report each
    connection's start and end (activity for ``idle_timeout``)."""
    plain = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port: int = plain[0].socket.getsockname()[1]
    listeners: list[Any] = list(plain) if context is None else \
        [trio.SSLListener(listener, context) for listener in plain]

    async def handle(client: trio.abc.Stream) -> None:
        connections(+1)
        try:
            try:
                upstream = await connect()
            except (OSError, trio.TooSlowError):  # nothing listens, or it never accepts
                await answer_unavailable(client)
                return
            async with trio.open_nursery() as relays:
                relays.start_soon(_relay, client, upstream)
                relays.start_soon(_relay, upstream, client)
        except Exception as exc:  # one bad connection must not stop the others
            log.info("relay to the sandbox's port ended: %s", exc)
        finally:
            connections(-1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handle, listeners)
        task_status.started(port)
        await done.wait()
        nursery.cancel_scope.cancel()
