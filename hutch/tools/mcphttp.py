"""The HTTP transports of ``hutch mcp``: streamable HTTP on loopback behind a bearer
token, or on a Unix socket whose mode (0600) is the access control.

Why the socket is made here and handed to uvicorn rather than named to it: uvicorn binds a
Unix socket and then makes it mode 0666, for everyone on the host, and an MCP server runs
commands in sandboxes for whoever reaches it.  Loopback alone is no protection on a shared
host (every local user reaches 127.0.0.1), hence the token; its comparison takes the same
time whatever the token sent, and the request is refused before the MCP SDK reads it.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import socket
import stat
from pathlib import Path
from typing import Any

LOOPBACK_NAMES = ("localhost",)


class BearerGate:
    """ASGI middleware: only requests carrying ``Authorization: Bearer TOKEN`` pass (the
    token compared in constant time); the rest get 401."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = b"Bearer " + token.encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"text/plain"),
                                        (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body",
                            "body": b"hutch mcp: missing or wrong bearer token\n"})
                return
        await self.app(scope, receive, send)


def loopback_address(spec: str) -> tuple[str, int]:
    """``HOST:PORT`` on loopback (127.0.0.0/8, ::1, localhost), or SystemExit."""
    host, sep, port = spec.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SystemExit(f"hutch: --http expects HOST:PORT, got {spec!r}")
    if host not in LOOPBACK_NAMES:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise SystemExit(f"hutch: --http serves on loopback only (127.0.0.1, ::1), "
                             f"not {host!r}")
    return ("127.0.0.1" if host == "localhost" else host), int(port)


def token_from_env() -> tuple[str, bool]:
    """``HUTCH_MCP_TOKEN`` (at least 16 characters), else a new random token; and whether
    it was made here (then it is printed)."""
    token = os.environ.get("HUTCH_MCP_TOKEN", "")
    if token:
        if len(token) < 16:
            raise SystemExit("hutch: HUTCH_MCP_TOKEN must be at least 16 characters")
        return token, False
    return secrets.token_urlsafe(32), True


def unix_listener(path: str) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600 from its creation; a stale socket
    there (nothing answers) is replaced, anything else refused."""
    target = Path(path)
    if target.exists() or target.is_symlink():
        if not stat.S_ISSOCK(target.lstat().st_mode):
            raise SystemExit(f"hutch: {path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(path)
        except OSError:
            target.unlink()
        else:
            raise SystemExit(f"hutch: something already serves on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(64)
    return sock


def serve_http(server: Any, sock: socket.socket, token: str | None) -> None:
    """Streamable HTTP at ``/mcp`` on ``sock`` with uvicorn (the SDK's dependency)."""
    import anyio
    import uvicorn
    from mcp.server.transport_security import TransportSecuritySettings

    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*", "[::1]:*"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"])
    app = server.streamable_http_app(transport_security=security)
    gated = BearerGate(app, token) if token is not None else app
    config = uvicorn.Config(gated, log_level="warning", lifespan="on")
    anyio.run(lambda: uvicorn.Server(config).serve(sockets=[sock]))
