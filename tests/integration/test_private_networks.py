"""Private networks on the real engine: sandboxes of one network reach each other by name
(with and without outbound access), a sandbox joining later is found by the earlier ones,
sandboxes off the network or on another one reach none of it, members leave when they end,
and networks outlive the daemon."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest

import hutch
from hutch.exception import AlreadyExistsError, ConflictError, InvalidError, NotFoundError
from tests.helpers import SERVE_HOSTNAME, kill_daemon, private_network, wait_for

SERVE = SERVE_HOSTNAME

#: prints what GET http://<argv[1]>:8000/ answers, or the error's name
FETCH = "import sys, urllib.request\n" \
    "try:\n" \
    "    print(urllib.request.urlopen(f'http://{sys.argv[1]}:8000/', timeout=3).read()" \
    ".decode())\n" \
    "except Exception as exc:\n" \
    "    print('failed', type(exc).__name__, exc)\n"


def fetch(sb: hutch.Sandbox, host: str) -> str:
    p = sb.exec("python3", "-c", FETCH, host)
    out = p.stdout.read().strip()
    assert p.wait() == 0, p.stderr.read()
    return out


def serving(sb: hutch.Sandbox, peer: hutch.Sandbox, host: str) -> str:
    """What ``peer`` gets from ``host`` once ``sb``'s server listens."""
    return wait_for(lambda: (lambda out: out if not out.startswith("failed") else None)(
        fetch(peer, host)), timeout=30, what=f"{host}:8000 answering")


@pytest.fixture
def network(engine: dict[str, Any]) -> Iterator[hutch.Network]:
    with private_network("it") as net:
        yield net


def test_members_find_each_other_by_name(network: hutch.Network) -> None:
    server = hutch.Sandbox.create("python3", "-c", SERVE, network=network,
                                  network_aliases=["web", "web.shop.internal"],
                                  block_network=True, timeout=120)
    client = hutch.Sandbox.create(network=network.name, name="client-1", timeout=120)
    try:
        assert serving(server, client, "web") == server.object_id
        assert fetch(client, "web.shop.internal") == server.object_id
        assert fetch(client, server.object_id) == server.object_id
        # the server, made first, finds the client that joined after it
        hosts = server.open("/etc/hosts").read()
        assert "client-1" in hosts and client.object_id in hosts
        members = {m.sandbox_id: m for m in network.members()}
        assert set(members) == {server.object_id, client.object_id}
        assert members[server.object_id].names == ("web", "web.shop.internal",
                                                    server.object_id)
        assert members[client.object_id].names == ("client-1", client.object_id)
        subnet = ipaddress.ip_network(network.hydrate().subnet or "")
        for member in members.values():
            assert ipaddress.ip_address(member.address) in subnet
        # block_network=True: the network is all the server reaches
        p = server.exec("python3", "-c", "import socket; socket.create_connection("
                                         "('1.1.1.1', 53), 3)")
        assert p.wait() != 0
    finally:
        server.terminate()
        client.terminate()


def test_others_reach_nothing_of_the_network(network: hutch.Network) -> None:
    server = hutch.Sandbox.create("python3", "-c", SERVE, network=network,
                                  network_aliases=["db"], timeout=120)
    other = hutch.Network.create(f"{network.name}-other")
    outsider = hutch.Sandbox.create(timeout=120)
    neighbour = hutch.Sandbox.create(network=other, network_aliases=["db"], timeout=120)
    try:
        member = hutch.Sandbox.create(network=network, timeout=120)
        try:
            assert serving(server, member, "db") == server.object_id
        finally:
            member.terminate()
        (address,) = [m.address for m in network.members() if m.sandbox_id == server.object_id]
        assert fetch(outsider, address).startswith("failed")
        assert fetch(outsider, "db").startswith("failed")  # no such name either
        assert fetch(neighbour, address).startswith("failed")
        # its own "db" is itself, not the other network's
        assert fetch(neighbour, "db").startswith("failed")
    finally:
        for sb in (server, outsider, neighbour):
            sb.terminate()
        neighbour.wait(raise_on_termination=False)
        wait_for(lambda: not other.members(), what="the neighbour leaving")
        hutch.Network.delete(other.name)


def test_members_leave_and_busy_networks_stay(network: hutch.Network) -> None:
    sb = hutch.Sandbox.create(network=network, network_aliases=["a"], timeout=120)
    with pytest.raises(ConflictError):
        hutch.Network.delete(network.name)
    sb.terminate()
    sb.wait(raise_on_termination=False)
    wait_for(lambda: not network.members(), what="the member leaving")
    # the address it had is not handed out again at once
    again = hutch.Sandbox.create(network=network, timeout=120)
    try:
        (member,) = network.members()
        assert member.sandbox_id == again.object_id
        assert "\ta " not in again.open("/etc/hosts").read()
    finally:
        again.terminate()


def test_bad_requests_are_typed_errors(network: hutch.Network) -> None:
    with pytest.raises(NotFoundError):
        hutch.Sandbox.create(network="no-such-network", timeout=30)
    with pytest.raises(InvalidError):
        hutch.Sandbox.create(network=network, network_aliases=["bad\nname"], timeout=30)
    with pytest.raises(InvalidError):
        hutch.Sandbox.create(network_aliases=["a"], timeout=30)
    with pytest.raises(InvalidError):
        hutch.Sandbox.create(network=42, timeout=30)  # type: ignore[arg-type]
    with pytest.raises(AlreadyExistsError):
        hutch.Network.create(network.name)
    with pytest.raises(NotFoundError):
        hutch.Network.delete("no-such-network")
    hutch.Network.delete("no-such-network", allow_missing=True)
    with pytest.raises(NotFoundError):
        hutch.Network.from_name("no-such-network").hydrate()
    assert network.name in [n.name for n in hutch.Network.list()]


def test_a_network_outlives_the_daemon(network: hutch.Network) -> None:
    server = hutch.Sandbox.create("python3", "-c", SERVE, network=network,
                                  network_aliases=["api"], timeout=120)
    try:
        kill_daemon()
        later = hutch.Sandbox.create(network=network, timeout=120)
        try:
            assert serving(server, later, "api") == server.object_id
            assert {m.sandbox_id for m in network.members()} == {server.object_id,
                                                                  later.object_id}
        finally:
            later.terminate()
    finally:
        server.terminate()


def test_ephemeral_network(engine: dict[str, Any]) -> None:
    with hutch.Network.ephemeral() as net:
        assert net.name in [n.name for n in hutch.Network.list()]
    assert net.name not in [n.name for n in hutch.Network.list()]


def test_many_members_join_at_once(network: hutch.Network) -> None:
    """Creates on one network from several threads: each succeeds, and every member's
    /etc/hosts ends up naming all of them (rewrites land in order)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(6) as pool:
        members = list(pool.map(lambda i: hutch.Sandbox.create(
            network=network, network_aliases=[f"n{i}"], block_network=True, timeout=120),
            range(12)))
    try:
        assert len({m.address for m in network.members()}) == 12
        for sb in members:
            hosts = sb.open("/etc/hosts").read()
            assert all(f"\tn{i} " in hosts for i in range(12)), hosts
    finally:
        for sb in members:
            sb.terminate()
