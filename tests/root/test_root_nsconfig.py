"""The engine's own network namespaces (root: the test inspects them with ``nsenter``).

``ForkServer.network_namespace`` has a child of the fork server make a namespace, hand its
descriptor over at once (the runtime joins it by path while the set-up goes on) and then
configure it (:mod:`hutch.engine.network.nsconfig`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import resource
import subprocess

import pytest
import trio

from hutch.engine.commands.zygote import ForkServer, Namespaces
from hutch.engine.network import hostnet, netns, outbound


async def _prepare(firewall: str | None = None) -> int:
    """A namespace made and configured by a fork server's child (its failure raised as
    itself)."""
    fd: int | None = None
    server = ForkServer(0, None)
    try:
        async with trio.open_nursery() as nursery:
            fd = (await nursery.start(server.network_namespace, firewall)).net
    except BaseExceptionGroup as group:
        if fd is not None:
            os.close(fd)
        raise group.exceptions[0] from None
    finally:
        server.stop()
    assert fd is not None
    return fd  # the nursery has waited for the configuration too


def _in(fd: int, *argv: str) -> str:
    return subprocess.run(["nsenter", f"--net=/proc/{os.getpid()}/fd/{fd}", *argv],
                          capture_output=True, text=True, check=True).stdout


def test_prepare_makes_a_new_namespace_with_lo_up_and_its_address() -> None:
    fd = trio.run(_prepare)
    try:
        assert os.stat(f"/proc/{os.getpid()}/fd/{fd}").st_ino != \
            os.stat("/proc/self/ns/net").st_ino  # not the host's (nor the caller's)
        assert "inet 127.0.0.1/8" in _in(fd, "ip", "-o", "addr", "show", "dev", "lo")
        assert "UP" in _in(fd, "ip", "-o", "link", "show", "lo").split(">")[0]
        links = _in(fd, "ip", "-o", "link", "show")
        assert [ln.split(":")[1].strip() for ln in links.splitlines()] == ["lo"]
    finally:
        os.close(fd)


def test_each_sandbox_gets_its_own_namespace() -> None:
    first, second = trio.run(_prepare), trio.run(_prepare)
    try:
        assert os.fstat(first).st_ino != os.fstat(second).st_ino
    finally:
        os.close(first)
        os.close(second)


def test_prepare_loads_the_firewall_with_libnftables() -> None:
    fd = trio.run(_prepare, outbound.ruleset(["192.0.2.0/24"]))
    try:
        rules = _in(fd, "nft", "list", "ruleset")
        assert "table inet hutch" in rules and "192.0.2.0/24 accept" in rules
        assert "inet 127.0.0.1/8" in _in(fd, "ip", "-o", "addr", "show", "dev", "lo")
    finally:
        os.close(fd)


def test_the_firewall_loads_when_the_hosts_networks_overlap_its_own() -> None:
    """The host's addresses and networks fall inside the fixed ranges and the allowlist
    (10.1.2.3 in 10.0.0.0/8, 127.0.0.1 in 127.0.0.0/8): nft merges them, and the host's
    own addresses come before the allowlist."""
    host = hostnet.HostNetworks(
        addresses=tuple(map(ipaddress.ip_address, ["127.0.0.1", "10.1.2.3", "192.0.2.2",
                                                   "::1", "fd00::2", "fe80::1"])),
        attached=tuple(map(ipaddress.ip_network, ["127.0.0.0/8", "10.1.0.0/16",
                                                  "192.0.2.0/24", "::1/128", "fd00::/64",
                                                  "fe80::/64"])))
    for allowlist in (None, ["10.0.0.0/8", "192.0.2.0/24"]):
        fd = trio.run(_prepare, outbound.ruleset(allowlist, host))
        try:
            rules = [line.strip() for line in _in(fd, "nft", "list", "ruleset").splitlines()]
        finally:
            os.close(fd)
        host_rule = next(r for r in rules if "192.0.2.2" in r)
        assert " reject" in host_rule and "10.1.2.3" in host_rule
        accepts = [i for i, r in enumerate(rules) if r.endswith(" accept") and "{" in r]
        assert all(rules.index(host_rule) < i for i in accepts)


def test_a_bad_ruleset_is_a_clear_error() -> None:
    with pytest.raises(netns.NetnsSetupFailed, match="firewall"):
        trio.run(_prepare, "table inet hutch { chain output { nonsense } }")


def test_the_firewall_loads_while_the_engine_holds_descriptors_past_1023() -> None:
    """libnftables waits with ``select()``, which aborted a daemon whose netlink socket was
    numbered 1024 or more: the fork server's child loads it, whatever the engine holds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), max(hard, 2048)))
    held: list[int] = []
    try:
        while not held or held[-1] < 1100:
            held.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        fd = trio.run(_prepare, outbound.ruleset(["192.0.2.0/24"]))
        try:
            assert fd >= 1024  # the engine's side is past select()'s range
            assert "192.0.2.0/24 accept" in _in(fd, "nft", "list", "ruleset")
        finally:
            os.close(fd)
    finally:
        for made in held:
            with contextlib.suppress(OSError):
                os.close(made)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_sandbox_of_its_own_ids_gets_both_namespaces_from_one_child() -> None:
    """With ``ids``, the child unshares a user namespace (the fork server writes its map),
    sets its counts as its root, and makes the network namespace inside it."""
    server = ForkServer(0, None)

    async def make() -> Namespaces:
        async with trio.open_nursery() as nursery:
            made: Namespaces = await nursery.start(
                server.network_namespace, outbound.ruleset(["192.0.2.0/24"]),
                ("0 700000 65536\n", {"max_user_namespaces": 0, "max_inotify_instances": 7}))
        return made

    try:
        made = trio.run(make)
    finally:
        server.stop()
    assert made.user is not None
    try:
        assert os.fstat(made.user).st_ino != os.stat("/proc/self/ns/user").st_ino
        user = f"/proc/{os.getpid()}/fd/{made.user}"
        uid_map = _in(made.net, "nsenter", f"--user={user}", "cat", "/proc/self/uid_map")
        assert uid_map.split() == ["0", "700000", "65536"]
        counts = _in(made.net, "nsenter", f"--user={user}", "cat",
                     "/proc/sys/user/max_user_namespaces", "/proc/sys/user/max_inotify_instances")
        assert counts.split() == ["0", "7"]
        assert "192.0.2.0/24 accept" in _in(made.net, "nft", "list", "ruleset")
    finally:
        os.close(made.net)
        os.close(made.user)
