"""The host from inside a sandbox with default networking: none of its addresses answer.

The attack (issue 15, item 5): a service of the host listening on ``0.0.0.0`` (or ``::``)
is reachable from a sandbox through the host's *non-loopback* address, or through that
address written as an IPv4-mapped IPv6 address (``::ffff:a.b.c.d``), because slirp4netns
connects out from the host's network namespace, where that address is the host itself.
Before the fix, ``192.0.2.2`` and ``::ffff:192.0.2.2`` (this machine's ``eth0``) got
through, TCP and UDP; everything else was already refused.

Every address of every interface of this machine (read with ``ip -j addr``, as the engine
reads them) is tried, in every form, plus slirp4netns's alias for the host (10.0.2.2) and
the NAT64 form of each IPv4 address; each must be refused at once while a listener on the
sandbox's own loopback still answers.  Only services this test starts on this machine are
targeted, so no packet is meant for another machine.

Item 11's DNS part: with ``outbound_cidr_allowlist``, queries to slirp4netns's resolver
(10.0.2.3, which forwards them to the host's resolver: a channel out) are refused unless
the allowlist admits that address.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import hutch

#: Seconds a sandbox may spend on one try; a refused one takes milliseconds.
TRY_TIMEOUT = 3.0

PROBE = r"""
import json, socket, sys, time
port, targets = int(sys.argv[1]), json.loads(sys.argv[2])
timeout = float(sys.argv[3])
results = {}

def where(host, kind):
    # getaddrinfo reads a scope ("fe80::1%tap0") and the forms of IPv6 addresses
    family, _, _, _, address = socket.getaddrinfo(host, port, type=kind)[0]
    return family, address

def tcp(host):
    family, address = where(host, socket.SOCK_STREAM)
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(address)
        return "open"
    except socket.timeout:
        return "timeout"
    except OSError as exc:
        return "closed:" + type(exc).__name__
    finally:
        s.close()

def udp(host):
    family, address = where(host, socket.SOCK_DGRAM)
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.connect(address)
        s.send(b"hutch-probe " + host.encode())
        s.recv(64)
        return "open"
    except socket.timeout:
        return "timeout"
    except OSError as exc:
        return "closed:" + type(exc).__name__
    finally:
        s.close()

# the check that works: the sandbox's own loopback, same code path
own = socket.create_server(("127.0.0.1", port))
results["own-loopback"] = tcp("127.0.0.1")
own.close()
for host in targets:
    start = time.monotonic()
    results["tcp " + host] = tcp(host) + " %.2f" % (time.monotonic() - start)
    results["udp " + host] = udp(host)
print(json.dumps(results))
"""


def host_addresses() -> list[tuple[str, str]]:
    """Every address of every interface of this machine: (address, interface)."""
    out = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True)
    return [(a["local"], link["ifname"]) for link in json.loads(out.stdout)
            for a in link.get("addr_info", []) if a.get("local")]


def targets() -> list[str]:
    """Every form a sandbox could write this machine's addresses in."""
    forms: list[str] = ["10.0.2.2", "::ffff:10.0.2.2"]
    for address, _ifname in host_addresses():
        ip = ipaddress.ip_address(address)
        if ip.version == 4:
            forms += [address, f"::ffff:{address}", f"64:ff9b::{address}"]
        elif ip.is_link_local:
            forms.append(f"{address}%tap0")  # the sandbox's only link
        else:
            forms.append(address)
    return forms


@dataclass
class HostServices:
    """TCP and UDP listeners of the host on 0.0.0.0 and :: (one port), and who reached
    them."""

    port: int
    sockets: list[socket.socket] = field(default_factory=list)
    reached: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


def _listen(port: int) -> list[socket.socket]:
    made: list[socket.socket] = []
    try:
        for family, kind, host in ((socket.AF_INET, socket.SOCK_STREAM, "0.0.0.0"),
                                   (socket.AF_INET6, socket.SOCK_STREAM, "::"),
                                   (socket.AF_INET, socket.SOCK_DGRAM, "0.0.0.0"),
                                   (socket.AF_INET6, socket.SOCK_DGRAM, "::")):
            s = socket.socket(family, kind)
            made.append(s)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((host, port))
            if kind == socket.SOCK_STREAM:
                s.listen(16)
            s.settimeout(0.2)
    except OSError:
        for s in made:
            s.close()
        raise
    return made


@pytest.fixture
def host_services() -> Iterator[HostServices]:
    for _ in range(20):  # an ephemeral port free for all four sockets
        probe = socket.socket()
        probe.bind(("0.0.0.0", 0))
        port = probe.getsockname()[1]
        probe.close()
        try:
            services = HostServices(port, _listen(port))
            break
        except OSError:
            continue
    else:
        pytest.fail("no port free for TCP and UDP on 0.0.0.0 and ::")

    def serve(s: socket.socket) -> None:
        while not services.stop.is_set():
            try:
                if s.type == socket.SOCK_STREAM:
                    conn, peer = s.accept()
                    conn.close()
                else:
                    data, peer = s.recvfrom(64)
                    s.sendto(data, peer)
            except (TimeoutError, OSError):
                continue
            services.reached.append(f"{s.type.name} from {peer[0]}")

    threads = [threading.Thread(target=serve, args=(s,), daemon=True) for s in services.sockets]
    for thread in threads:
        thread.start()
    try:
        yield services
    finally:
        services.stop.set()
        for thread in threads:
            thread.join(timeout=5)
        for s in services.sockets:
            s.close()


def _probe(sb: hutch.Sandbox, port: int, forms: list[str]) -> dict[str, str]:
    p = sb.exec("python3", "-c", PROBE, str(port), json.dumps(forms), str(TRY_TIMEOUT))
    out = p.stdout.read()
    assert p.wait() == 0, p.stderr.read()
    result: dict[str, str] = json.loads(out)
    return result


def test_the_host_listeners_answer_the_host_itself(host_services: HostServices) -> None:
    """The listeners are real: from the host, each address reaches them."""
    for address, ifname in host_addresses():
        host = f"{address}%{ifname}" if ipaddress.ip_address(address).is_link_local else address
        family, _, _, _, where = socket.getaddrinfo(host, host_services.port,
                                                    type=socket.SOCK_STREAM)[0]
        with socket.socket(family) as s:
            s.settimeout(TRY_TIMEOUT)
            s.connect(where)


def test_no_address_of_the_host_is_reachable_from_a_sandbox(
        sandbox: hutch.Sandbox, host_services: HostServices) -> None:
    forms = targets()
    started = time.monotonic()
    result = _probe(sandbox, host_services.port, forms)
    elapsed = time.monotonic() - started
    assert result.pop("own-loopback") == "open"  # the probe can connect
    got_through = {key: value for key, value in result.items()
                   if not value.startswith("closed")}
    assert got_through == {}, f"reached the host: {got_through}"
    assert host_services.reached == []  # and nothing arrived at the host's listeners
    # refused, not dropped: every try fails at once (about 0.1 s for all of them here)
    assert elapsed < 10 + TRY_TIMEOUT, elapsed


def test_the_allowlist_never_admits_the_host(
        engine: dict[str, Any], host_services: HostServices) -> None:
    """An allowlist wide enough to hold the host's addresses (and slirp4netns's alias of
    it) still does not reach them."""
    forms = targets()
    sb = hutch.Sandbox.create(outbound_cidr_allowlist=["0.0.0.0/0"], timeout=60)
    try:
        result = _probe(sb, host_services.port, forms)
    finally:
        sb.terminate(grace_period=0)
    assert result.pop("own-loopback") == "open"
    got_through = {key: value for key, value in result.items()
                   if not value.startswith("closed")}
    assert got_through == {}, f"reached the host: {got_through}"
    assert host_services.reached == []


DNS_QUERY = r"""
import socket, struct, sys
query = struct.pack(">HHHHHH", 0x4855, 0x0100, 1, 0, 0, 0)
query += b"".join(bytes([len(p)]) + p for p in b"hutch-probe.invalid".split(b".")) + b"\0"
query += struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[1]))
s.connect(("10.0.2.3", 53))
try:
    s.send(query)
    s.recv(512)
    print("answered")
except socket.timeout:
    print("timeout")
except OSError as exc:
    print("refused", type(exc).__name__)
"""


def test_an_allowlist_without_the_resolver_sends_no_dns(engine: dict[str, Any]) -> None:
    """With an allowlist that does not name 10.0.2.3, a DNS query is refused inside the
    sandbox (it never reaches slirp4netns, nor the host's resolver)."""
    sb = hutch.Sandbox.create(outbound_cidr_allowlist=["192.0.2.0/24"], timeout=60)
    try:
        p = sb.exec("python3", "-c", DNS_QUERY, str(TRY_TIMEOUT))
        out = p.stdout.read().strip()
        assert p.wait() == 0, p.stderr.read()
    finally:
        sb.terminate(grace_period=0)
    assert out.startswith("refused"), out
