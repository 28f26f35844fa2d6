"""A tunnel URL works from the user's other sandboxes as from the host (as Modal's public
URLs do): ``https://127.0.0.1:<port>`` also listens inside every sandbox with open network
access, verified against the system trust of that sandbox; sandboxes without network or
with an allowlist get nothing, and the listeners go with the tunnel's sandbox.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import hutch
from tests.helpers import kill_daemon, wait_for

FETCH = """
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
        print("ok", r.read().decode().strip())
except Exception as exc:
    print("failed", type(exc).__name__, exc)
"""


def _fetch(sb: hutch.Sandbox, url: str) -> str:
    p = sb.exec("python3", "-c", FETCH, url, timeout=60)
    out = p.stdout.read().strip()
    assert p.wait() == 0, p.stderr.read()
    return out


@pytest.fixture
def server(engine: dict[str, Any]) -> Iterator[hutch.Sandbox]:
    sb = hutch.Sandbox.create("python3", "-m", "http.server", "8443", "--directory", "/etc",
                              encrypted_ports=[8443],
                              readiness_probe=hutch.Probe.with_tcp(8443), timeout=180)
    sb.wait_until_ready()
    yield sb
    sb.terminate()


def test_a_tunnel_url_works_in_sandboxes_made_before_and_after_it(
        engine: dict[str, Any]) -> None:
    before = hutch.Sandbox.create(timeout=180)
    try:
        sb = hutch.Sandbox.create("python3", "-m", "http.server", "8443", "--directory",
                                  "/etc", encrypted_ports=[8443],
                                  readiness_probe=hutch.Probe.with_tcp(8443), timeout=180)
        sb.wait_until_ready()
        url = sb.tunnels()[8443].url + "/hostname"
        after = hutch.Sandbox.create(timeout=180)
        try:
            for client in (before, after, sb):
                assert _fetch(client, url) == f"ok {sb.object_id}"
            kill_daemon()  # a new daemon listens inside them again
            assert _fetch(before, url) == f"ok {sb.object_id}"
            sb.terminate()
            wait_for(lambda: _fetch(after, url).startswith("failed URLError"),
                     what="the listener to go with its sandbox")
        finally:
            after.terminate()
            sb.terminate()
    finally:
        before.terminate()


def test_sandboxes_without_open_network_do_not_reach_tunnels(server: hutch.Sandbox) -> None:
    url = server.tunnels()[8443].url + "/hostname"
    blocked = hutch.Sandbox.create(block_network=True, timeout=120)
    listed = hutch.Sandbox.create(outbound_cidr_allowlist=["192.0.2.0/24"], timeout=120)
    try:
        for sb in (blocked, listed):
            assert _fetch(sb, url).startswith("failed URLError"), sb.object_id
    finally:
        blocked.terminate()
        listed.terminate()


def test_localhost_names_the_tunnel_too(server: hutch.Sandbox) -> None:
    """The engine's certificate names 127.0.0.1 and localhost, as on the host."""
    port = server.tunnels()[8443].port
    client = hutch.Sandbox.create(timeout=120)
    try:
        assert _fetch(client, f"https://localhost:{port}/hostname") == \
            f"ok {server.object_id}"
    finally:
        client.terminate()
