"""Allowlists against a test host in a network namespace this test makes (root only: joining a
namespace to the host's network takes a veth pair, which an unprivileged user cannot make).

The test host is 10.123.45.2 (a private address, so unreachable by default) serving HTTP;
sandboxes reach the host's network through slirp4netns, and the host routes 10.123.45.0/24
to the veth pair.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import hutch
from tests.helpers import wait_for

HOST_IP = "10.123.45.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def test_host(root_engine: dict[str, Any]) -> Iterator[str]:
    name = f"hutch-t{uuid.uuid4().hex[:6]}"
    outer, inner = f"{name}a", f"{name}b"
    _ip("netns", "add", name)
    server = None
    try:
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", name)
        _ip("addr", "add", "10.123.45.1/24", "dev", outer)
        _ip("link", "set", outer, "up")
        _ip("-n", name, "addr", "add", f"{HOST_IP}/24", "dev", inner)
        _ip("-n", name, "link", "set", inner, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        server = subprocess.Popen(["ip", "netns", "exec", name, "python3", "-m", "http.server",
                                   "--bind", HOST_IP, "8080"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up() -> bool:
            probe = subprocess.run(["python3", "-c", "import socket; socket.create_connection("
                                    f"('{HOST_IP}', 8080), 1)"], capture_output=True)
            return probe.returncode == 0

        wait_for(up, timeout=20, what="the test host")
        yield f"{HOST_IP}:8080"
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        subprocess.run(["ip", "link", "del", outer], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _reaches(sb: hutch.Sandbox, target: str) -> bool:
    host, port = target.split(":")
    p = sb.exec("python3", "-c", f"import socket; socket.create_connection(('{host}', {port}), 5)")
    return p.wait() == 0


@pytest.mark.parametrize(("allowlist", "reachable"), [
    (None, False),                 # private ranges are closed by default
    ([f"{HOST_IP}/32"], True),     # unless allowlisted
    (["10.123.45.0/24"], True),
    (["10.123.46.0/24"], False),   # another network admits nothing here
])
def test_allowlist_against_a_test_host(test_host: str, allowlist: list[str] | None,
                                       reachable: bool) -> None:
    sb = hutch.Sandbox.create(outbound_cidr_allowlist=allowlist, timeout=60)
    try:
        assert _reaches(sb, test_host) is reachable
    finally:
        sb.terminate()
