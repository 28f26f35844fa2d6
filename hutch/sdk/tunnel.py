"""``Tunnel``: how the host reaches a port of a sandbox (``sb.tunnels()``), as Modal has it.

hutch forwards each of a sandbox's ``unencrypted_ports`` from an ephemeral port of the
host's 127.0.0.1 (slirp4netns does the forwarding), so ``host`` is always ``127.0.0.1``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tunnel:
    """A forwarded sandbox port: ``tcp_socket`` is where to connect."""

    host: str
    port: int
    unencrypted_host: str
    unencrypted_port: int

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (hutch's forwards are plain TCP)."""
        return f"http://{self.host}:{self.port}"

    @property
    def tcp_socket(self) -> tuple[str, int]:
        return self.unencrypted_host, self.unencrypted_port
