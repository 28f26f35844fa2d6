"""``Tunnel``: how the host reaches a port of a sandbox (``sb.tunnels()``), as Modal has it.

hutch serves each of a sandbox's ``unencrypted_ports`` on an ephemeral port of the
host's 127.0.0.1 (the engine relays each connection to the port on the sandbox's own
loopback: nothing else listens for it on the host), and each of its
``encrypted_ports`` over TLS on another one (certificate from the engine's CA, which
``hutch engine ca`` prints); ``host`` is always ``127.0.0.1``.
"""

from __future__ import annotations

from dataclasses import dataclass

from hutch.exception import InvalidError


@dataclass(frozen=True)
class Tunnel:
    """A forwarded sandbox port: ``tcp_socket`` is where to connect."""

    host: str
    port: int
    unencrypted_host: str | None = None
    unencrypted_port: int | None = None

    @property
    def url(self) -> str:
        """``https://127.0.0.1:<port>`` for an encrypted port (TLS from the engine's CA),
        ``http://...`` for an unencrypted one."""
        scheme = "http" if self.unencrypted_port == self.port else "https"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def tls_socket(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def tcp_socket(self) -> tuple[str, int]:
        """Where to connect in plain TCP (only for ``unencrypted_ports``)."""
        if self.unencrypted_host is None or self.unencrypted_port is None:
            raise InvalidError("This tunnel is not configured for unencrypted TCP.")
        return self.unencrypted_host, self.unencrypted_port
