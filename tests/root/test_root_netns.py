"""The engine's set-up of a network namespace nobody configured (root: the test itself must
join the namespace, and ``unshare --net`` leaves ``lo`` down, unlike the OCI runtimes)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
import trio

from hutch.engine import netns, network


def _lo(pid: int) -> str:
    return subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-o", "addr", "show",
                           "dev", "lo"], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def bare_netns() -> Iterator[int]:
    holder = subprocess.Popen(["unshare", "--net", "sh", "-c", "echo ready; exec sleep 60"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "ready\n"  # it is in its own namespace now
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_configure_brings_lo_up_with_its_address(bare_netns: int) -> None:
    assert "127.0.0.1" not in _lo(bare_netns)
    trio.run(netns.configure, bare_netns)
    shown = _lo(bare_netns)
    assert "inet 127.0.0.1/8" in shown
    flags = subprocess.run(["nsenter", f"--net=/proc/{bare_netns}/ns/net", "ip", "-o", "link",
                            "show", "lo"], capture_output=True, text=True, check=True).stdout
    assert "UP" in flags.split(">")[0]


def test_a_namespace_that_is_gone_is_a_clear_error() -> None:
    holder = subprocess.Popen(["true"])
    holder.wait()
    with pytest.raises(netns.NetnsSetupFailed, match="pyroute2"):
        trio.run(netns.configure, holder.pid)


def test_configure_loads_the_firewall_with_libnftables(bare_netns: int) -> None:
    trio.run(netns.configure, bare_netns, network.ruleset(["192.0.2.0/24"]))
    rules = subprocess.run(["nsenter", f"--net=/proc/{bare_netns}/ns/net", "nft", "list",
                            "ruleset"], capture_output=True, text=True, check=True).stdout
    assert "table inet hutch" in rules and "192.0.2.0/24 accept" in rules
    assert "inet 127.0.0.1/8" in _lo(bare_netns)


def test_a_bad_ruleset_is_a_clear_error(bare_netns: int) -> None:
    with pytest.raises(netns.NetnsSetupFailed, match="firewall"):
        trio.run(netns.configure, bare_netns, "table inet hutch { chain output { nonsense } }")
