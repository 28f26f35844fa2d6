"""A sandbox and the remote-engine gateway of its own engine's user.

The attack: `hutch engine serve --listen tcp://0.0.0.0:PORT` listens on every address of
the host, and code in a sandbox knows the port (it is in the docs). It cannot get in
without a bundle, but it could hold the gateway's admission slots: it reaches the host
through slirp4netns, which connects from the host itself, so its connections would count
against the same address as the user's own local clients (16 at once per address) and
shut them out. So no address of the host may reach the gateway from a sandbox, while the
host itself reaches it on each of them (tests/security/test_network_host.py proves the
same for any listener; this is the one hutch itself opens).
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any

import hutch
from tests.integration.remote_servers import serve_gateway
from tests.security.test_network_host import _probe, host_addresses, targets


def test_no_address_of_the_host_reaches_the_gateway_from_a_sandbox(
        engine: dict[str, Any], tmp_path: Path) -> None:
    with serve_gateway(tmp_path / "bundle", prefix="sec", listen="0.0.0.0") as port:
        ipv4 = [a for a, _ in host_addresses() if ipaddress.ip_address(a).version == 4]
        for address in ipv4:  # the gateway is there: the host reaches it on each address
            with socket.create_connection((address, port), timeout=10):
                pass
        sb = hutch.Sandbox.create(timeout=120)
        try:
            result = _probe(sb, port, targets())
        finally:
            sb.terminate()
    assert result["own-loopback"] == "open", result
    reached = {k: v for k, v in result.items() if k.startswith("tcp ") and v.startswith("open")}
    assert not reached, f"the gateway was reached from a sandbox: {reached}"
