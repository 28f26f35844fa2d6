"""A sandbox's ports from the host's side: an ``encrypted_ports`` entry is reached over
TLS and in no other way.

The engine's listener on 127.0.0.1 is meant to be the one way in.  It used to relay to a
plain-text forward that slirp4netns kept on another 127.0.0.1 port, which any process of
the host could use directly: the sandbox's service without TLS, and without counting as
activity for ``idle_timeout``.  Here a local client tries every TCP listener of the host.
"""

from __future__ import annotations

import socket
import ssl
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

import hutch
from tests.helpers import hutch_cli

TCP_LISTEN = "0A"


def _local_listeners() -> set[int]:
    """Ports of the TCP sockets listening on 127.0.0.1 or 0.0.0.0 (this network namespace)."""
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, _, state = line.split()[1:4]
        address, port = local.split(":")
        if state == TCP_LISTEN and address in ("0100007F", "00000000"):
            ports.add(int(port, 16))
    return ports


def _plain_get(port: int, path: str) -> bytes:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            data = b""
            while len(data) < 65536 and (chunk := s.recv(65536)):
                data += chunk
            return data
    except OSError:
        return b""


def test_an_encrypted_port_has_no_plain_text_path(engine: dict[str, Any],
                                                  tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    before = _local_listeners()
    sb = hutch.Sandbox.create(
        "sh", "-c", f"mkdir -p /srv && echo {marker} > /srv/marker && "
                    "exec python3 -m http.server 8443 --directory /srv",
        encrypted_ports=[8443], readiness_probe=hutch.Probe.with_tcp(8443), timeout=120)
    try:
        sb.wait_until_ready()
        tunnel = sb.tunnels()[8443]
        ca = hutch_cli("engine", "ca")
        (tmp_path / "ca.pem").write_bytes(ca.stdout)
        verify = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        # the one way in works: TLS, verified against the engine's CA
        answer = httpx.get(f"{tunnel.url}/marker", verify=verify, timeout=10)
        assert answer.text == f"{marker}\n"
        # and no other local listener serves the sandbox's port in plain text
        new = sorted(_local_listeners() - before)
        with ThreadPoolExecutor(8) as pool:
            answers = dict(zip(new, pool.map(lambda p: _plain_get(p, "/marker"), new),
                               strict=True))
        leaks = [port for port, data in answers.items() if marker.encode() in data]
        assert leaks == [], f"plain-text paths to an encrypted port: {leaks} (of {new})"
        assert tunnel.tls_socket[1] in new  # (the scan saw the engine's own listener)
    finally:
        sb.terminate()
