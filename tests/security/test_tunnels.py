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
from tests.helpers import hutch_cli, wait_for

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


LISTENERS_INSIDE = """
from pathlib import Path
for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
    local, _, state = line.split()[1:4]
    address, port = local.split(":")
    if state == "0A":
        print(address, int(port, 16))
"""


def test_a_sandbox_gets_listeners_for_live_tunnels_only(engine: dict[str, Any]) -> None:
    """What the engine opens inside another sandbox for a tunnel (so its URL works there)
    is one 127.0.0.1 listener per live tunnel port: nothing on other addresses, nothing
    left once the tunnel's sandbox has ended (a socket held there would also keep that
    namespace), and each serves the tunnel with TLS only."""
    client = hutch.Sandbox.create(timeout=120)
    server = hutch.Sandbox.create("python3", "-m", "http.server", "8443", encrypted_ports=[8443],
                                  readiness_probe=hutch.Probe.with_tcp(8443), timeout=120)
    try:
        server.wait_until_ready()
        port = server.tunnels()[8443].port
        p = client.exec("python3", "-c", LISTENERS_INSIDE)
        inside = p.stdout.read().split()
        assert p.wait() == 0
        assert inside == ["0100007F", str(port)]
        p = client.exec("python3", "-c", f"""
import socket
s = socket.create_connection(("127.0.0.1", {port}), 10)
s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
s.settimeout(10)
print(repr(s.recv(100)))
""")
        assert "HTTP/1.0 200" not in p.stdout.read()  # (a TLS alert, or nothing)
        server.terminate()

        def listeners() -> list[str]:
            return client.exec("python3", "-c", LISTENERS_INSIDE).stdout.read().split()

        wait_for(lambda: listeners() == [], what="the tunnel's listener to go")
    finally:
        server.terminate()
        client.terminate()
