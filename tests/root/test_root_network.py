"""Allowlists and the host's own networks against test hosts in network namespaces this test
makes (root only: joining a namespace to the host's network takes a veth pair, which an
unprivileged user cannot make).

Each test host serves HTTP on port 8080 behind a veth pair whose host end holds the
network's ``.1``, so the host is directly attached to that network: 10.123.45.0/24 (a
private range, unreachable by default anyway) and 203.0.113.0/24 (TEST-NET-3, outside every
fixed range the firewall names: only reading the host's attached networks at creation
keeps it out of reach).  Sandboxes reach the host's network through slirp4netns.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import hutch
from tests.helpers import wait_for

HOST_IP = "10.123.45.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextmanager
def _test_host(network: str) -> Iterator[str]:
    """A host at ``network``.2 serving HTTP on 8080, attached to this host (``network``.1)."""
    host_ip = f"{network}.2"
    name = f"hutch-t{uuid.uuid4().hex[:6]}"
    outer, inner = f"{name}a", f"{name}b"
    _ip("netns", "add", name)
    server = None
    try:
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", name)
        _ip("addr", "add", f"{network}.1/24", "dev", outer)
        _ip("link", "set", outer, "up")
        _ip("-n", name, "addr", "add", f"{host_ip}/24", "dev", inner)
        _ip("-n", name, "link", "set", inner, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        server = subprocess.Popen(["ip", "netns", "exec", name, "python3", "-m", "http.server",
                                   "--bind", host_ip, "8080"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up() -> bool:
            probe = subprocess.run(["python3", "-c", "import socket; socket.create_connection("
                                    f"('{host_ip}', 8080), 1)"], capture_output=True)
            return probe.returncode == 0

        wait_for(up, timeout=20, what="the test host")
        yield f"{host_ip}:8080"
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        subprocess.run(["ip", "link", "del", outer], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def test_host(root_engine: dict[str, Any]) -> Iterator[str]:
    with _test_host("10.123.45") as target:
        yield target


@pytest.fixture
def public_lan(root_engine: dict[str, Any]) -> Iterator[str]:
    with _test_host("203.0.113") as target:
        yield target


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


@pytest.mark.parametrize(("allowlist", "reachable"), [
    (None, False),                 # the host's LAN, whatever its range, is closed by default
    (["203.0.113.2/32"], True),    # unless allowlisted
    (["203.0.113.0/24"], True),
])
def test_the_hosts_lan_is_closed_by_default_whatever_its_range(
        public_lan: str, allowlist: list[str] | None, reachable: bool) -> None:
    sb = hutch.Sandbox.create(outbound_cidr_allowlist=allowlist, timeout=60)
    try:
        assert _reaches(sb, public_lan) is reachable
    finally:
        sb.terminate()


def test_the_hosts_own_address_on_its_lan_stays_closed_when_the_lan_is_allowed(
        public_lan: str) -> None:
    """A service of the host on 0.0.0.0, named by the host's address on an allowlisted
    LAN (203.0.113.1), is not reached; the LAN's other host is."""
    listener = socket.create_server(("0.0.0.0", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted: list[object] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                accepted.append(listener.accept()[1])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    sb = hutch.Sandbox.create(outbound_cidr_allowlist=["203.0.113.0/24"], timeout=60)
    try:
        assert _reaches(sb, public_lan)
        assert not _reaches(sb, f"203.0.113.1:{port}")
    finally:
        sb.terminate()
        done.set()
        thread.join(timeout=5)
        listener.close()
    assert accepted == []


def test_private_networks_work_for_a_root_engine(root_engine: dict[str, Any]) -> None:
    """The same private network as the rootless suite's, its namespaces made by real root."""
    with hutch.Network.ephemeral() as net:
        server = hutch.Sandbox.create("python3", "-m", "http.server", "8000", network=net,
                                      network_aliases=["files"], timeout=120)
        client = hutch.Sandbox.create(network=net, block_network=True, timeout=120)
        try:
            def fetched() -> bool:
                p = client.exec("python3", "-c", "import urllib.request; urllib.request."
                                "urlopen('http://files:8000/', timeout=3)")
                return p.wait() == 0

            wait_for(fetched, timeout=30, what="the server answering by name")
        finally:
            for sb in (server, client):
                sb.terminate()
                sb.wait(raise_on_termination=False)
            wait_for(lambda: not net.members(), what="the members leaving")


def test_sandboxes_made_ahead_do_not_outlive_the_hosts_networks(
        root_engine: dict[str, Any]) -> None:
    """The engine's reserve (and a warm pool) make sandboxes before anyone asks: one made
    before the host joined a LAN has a firewall that does not know that LAN, and must not
    be handed out after (the reserve's first version did: this test's LAN was reachable)."""
    from hutch.sdk.transport import request_blocking

    for _ in range(8):  # the default configuration, the one the reserve keeps
        hutch.Sandbox.create("true", timeout=30)
    wait_for(lambda: (lambda r: r["size"] and r["ready"] >= r["size"])(
        request_blocking("GET", "/v1/engine")["reserve"]), what="the reserve filled")
    app = hutch.App.lookup(f"pool-{uuid.uuid4().hex[:8]}", create_if_missing=True)
    pool = app.warm_pool(size=1)
    pool.wait_ready(timeout=60)
    try:
        with _test_host("203.0.113") as lan:  # the host joins a LAN now
            for kwargs in ({}, {"app": app}):
                sb = hutch.Sandbox.create(timeout=60, **kwargs)
                try:
                    assert not _reaches(sb, lan), kwargs
                finally:
                    sb.terminate()
    finally:
        pool.delete()


def test_members_do_not_forward_even_where_the_host_does(root_engine: dict[str, Any]) -> None:
    """A new network namespace copies the host's IPv4 settings: on a host that forwards
    (Docker, Kubernetes) a member would route between its eth0 and tap0. The engine turns
    forwarding, route_localnet, proxy_arp and source routes off in every member."""
    settings = [Path(f"/proc/sys/net/ipv4/conf/{scope}/{name}")
                for scope in ("all", "default") for name in ("forwarding", "route_localnet")]
    saved = [p.read_text() for p in settings]
    try:
        for path in settings:
            path.write_text("1")
        with hutch.Network.ephemeral() as net:
            sb = hutch.Sandbox.create(network=net, timeout=60)
            try:
                p = sb.exec("sh", "-c", "cat /proc/sys/net/ipv4/conf/all/forwarding "
                            "/proc/sys/net/ipv4/conf/eth0/forwarding "
                            "/proc/sys/net/ipv4/conf/eth0/route_localnet")
                assert p.stdout.read().split() == ["0", "0", "0"]
            finally:
                sb.terminate()
                sb.wait(raise_on_termination=False)
            wait_for(lambda: not net.members(), what="the member leaving")
    finally:
        for path, value in zip(settings, saved, strict=True):
            path.write_text(value)
