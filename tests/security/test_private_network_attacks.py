"""Hostile members of a private network (hutch.Network): what root in one sandbox tries
against its peers, the network's own namespace, the host and the engine.

A member is root of its own user namespace but holds no capability over its network
namespace (which its sandbox's namespace does not own for that purpose: CAP_NET_ADMIN and
CAP_NET_RAW are outside its bounding set), so it cannot give itself another address,
sniff or forge frames, take its interface down or add a route; the bridge has no address,
IPv6 is off (no link-local way around the IPv4 rules), the host's addresses stay out of
reach of an offline member, and its /etc/hosts, which the engine rewrites in place, is
read-only to it, so no member can point a peer's name elsewhere.
"""

from __future__ import annotations

import ipaddress
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import hutch
from hutch.exception import InvalidError, ResourceExhaustedError
from tests.helpers import private_network, wait_for

#: Each attack prints one JSON line {"name": outcome}; an outcome is "refused: <errno
#: name>" or what the attack got.
ATTACKS = r"""
import errno, fcntl, json, os, socket, struct, sys
peer = sys.argv[1]
results = {}
def attempt(name, fn):
    try:
        results[name] = "done: " + str(fn())
    except OSError as exc:
        results[name] = "refused: " + (errno.errorcode.get(exc.errno, str(exc.errno)))
def ifreq_addr(address):
    return struct.pack("16sH2s4s8s", b"eth0", socket.AF_INET, b"\0\0",
                       socket.inet_aton(address), b"\0" * 8)
s = socket.socket()
SIOCSIFADDR, SIOCSIFFLAGS, SIOCADDRT = 0x8916, 0x8914, 0x890B
attempt("set address", lambda: fcntl.ioctl(s, SIOCSIFADDR, ifreq_addr(peer)))
attempt("interface down", lambda: fcntl.ioctl(s, SIOCSIFFLAGS,
                                               struct.pack("16sH14s", b"eth0", 0, b"")))
attempt("packet socket", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                               socket.htons(3)))
attempt("raw socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW,
                                            socket.IPPROTO_ICMP))
def route_change():
    n = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    n.bind((0, 0))
    n.send(struct.pack("=LHHLL", 28, 24, 0x405, 1, 0)
           + struct.pack("=BBBBBBBBL", 2, 0, 0, 0, 254, 3, 0, 1, 0))
    return n.recv(4096)[16:20]
attempt("netlink route change", route_change)
attempt("write hosts", lambda: open("/etc/hosts", "a").write("6.6.6.6 victim\n"))
with open("/proc/net/if_inet6") as f:
    results["ipv6 addresses"] = [l.split()[-1] for l in f if l.split()[-1] != "lo"]
with open("/proc/sys/net/ipv6/conf/eth0/disable_ipv6") as f:
    results["eth0 ipv6 disabled"] = f.read().strip()
for scope in ("all", "eth0"):
    for name in ("forwarding", "route_localnet", "proxy_arp", "accept_source_route"):
        with open(f"/proc/sys/net/ipv4/conf/{scope}/{name}") as f:
            results[f"{scope} {name}"] = f.read().strip()
print(json.dumps(results))
"""

CONNECT = r"""
import json, socket, sys
out = {}
for target in sys.argv[1:]:
    try:
        socket.create_connection((target, 8000), 3).close()
        out[target] = "open"
    except OSError as exc:
        out[target] = "closed: " + type(exc).__name__
print(json.dumps(out))
"""


def _json(sb: hutch.Sandbox, *argv: str) -> dict[str, Any]:
    p = sb.exec(*argv)
    out = p.stdout.read()
    assert p.wait() == 0, p.stderr.read()
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.fixture
def network(engine: dict[str, Any]) -> Iterator[hutch.Network]:
    with private_network("sec") as net:
        yield net


def test_root_in_a_member_cannot_reconfigure_spoof_or_sniff(network: hutch.Network) -> None:
    victim = hutch.Sandbox.create(network=network, network_aliases=["victim"], timeout=120)
    attacker = hutch.Sandbox.create(network=network, timeout=120)
    try:
        (victim_address,) = [m.address for m in network.members()
                             if m.sandbox_id == victim.object_id]
        got = _json(attacker, "python3", "-c", ATTACKS, victim_address)
        for attack in ("set address", "interface down", "packet socket", "raw socket"):
            assert got[attack] == "refused: EPERM", (attack, got)
        # the names the engine writes are not the sandbox's to change
        assert got["write hosts"] == "refused: EROFS", got
        assert "6.6.6.6" not in victim.open("/etc/hosts").read()
        # the kernel answers the route request with -EPERM in its reply
        assert got["netlink route change"] == "done: " + str((-1).to_bytes(4, "little",
                                                                       signed=True)), got
        # (tap0, slirp4netns's, has one: its firewall refuses all IPv6)
        assert "eth0" not in got["ipv6 addresses"] and got["eth0 ipv6 disabled"] == "1", got
        # nothing routes between eth0 and tap0, whatever the host's own settings
        assert all(got[f"{scope} {name}"] == "0" for scope in ("all", "eth0") for name in
                   ("forwarding", "route_localnet", "proxy_arp", "accept_source_route")), got
        (attacker_member,) = [m for m in network.members()
                              if m.sandbox_id == attacker.object_id]
        assert attacker_member.address != victim_address
    finally:
        victim.terminate()
        attacker.terminate()


def test_the_bridge_the_host_and_other_networks_are_out_of_reach(
        network: hutch.Network) -> None:
    other = hutch.Network.create(f"{network.name}-x")
    member = hutch.Sandbox.create(network=network, block_network=True, timeout=120)
    stranger = hutch.Sandbox.create("python3", "-m", "http.server", "8000", network=other,
                                    block_network=True, timeout=120)
    try:
        subnet = ipaddress.ip_network(network.hydrate().subnet or "")
        (stranger_address,) = [m.address for m in other.members()]
        host_addresses = [a for a in hutch_host_addresses() if a.version == 4]
        targets = [str(subnet[1]), stranger_address, *map(str, host_addresses)]
        got = _json(member, "python3", "-c", CONNECT, *targets)
        assert all(v.startswith("closed") for v in got.values()), got
    finally:
        member.terminate()
        stranger.terminate()
        stranger.wait(raise_on_termination=False)
        wait_for(lambda: not other.members(), what="the stranger leaving")
        hutch.Network.delete(other.name)


def hutch_host_addresses() -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """This machine's own addresses, as the engine reads them."""
    from hutch.engine.network import hostnet

    return list(hostnet.read().addresses)


@pytest.mark.parametrize("alias", ["a\nb", "a b", "a\tb", "-a", "a..b", "x" * 64, "é"])
def test_aliases_cannot_inject_hosts_lines(network: hutch.Network, alias: str) -> None:
    with pytest.raises(InvalidError):
        hutch.Sandbox.create(network=network, network_aliases=[alias], timeout=30)


def test_networks_are_bounded(engine: dict[str, Any]) -> None:
    made: list[str] = []
    try:
        with pytest.raises(ResourceExhaustedError, match="networks exist"):
            for _ in range(300):
                made.append(hutch.Network.create(f"flood-{uuid.uuid4().hex[:12]}").name)
        assert len(made) <= 256
    finally:
        for name in made:
            hutch.Network.delete(name)
