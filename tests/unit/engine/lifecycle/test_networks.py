"""The private network registry's bookkeeping: subnets, addresses, names, hosts files and
records (the kernel side, :mod:`hutch.engine.network.bridges`, is replaced by files here;
tests/root/test_root_bridges.py and tests/integration/test_private_networks.py run it)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import trio

from hutch.api.models import NetworkAttachment
from hutch.engine.errors import AlreadyExists, Conflict, Exhausted, NotFound
from hutch.engine.lifecycle import networks
from hutch.engine.network import bridges, outbound
from tests.unit.engine.network.test_hostnet import HOST


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> networks.NetworkRegistry:
    left: list[tuple[str, str]] = []
    monkeypatch.setattr(bridges, "make", lambda path: path.write_text("netns"))
    monkeypatch.setattr(bridges, "alive", lambda path: path.exists())
    monkeypatch.setattr(bridges, "remove", lambda path: path.unlink(missing_ok=True))
    monkeypatch.setattr(bridges, "leave", lambda path, name: left.append((path.name, name)))
    (tmp_path / "data").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "hosts").mkdir()
    made = networks.NetworkRegistry(tmp_path / "data", tmp_path / "run",
                                    lambda sandbox_id: tmp_path / "hosts" / sandbox_id)
    made.left = left  # type: ignore[attr-defined]
    return made


def _hosts(registry: networks.NetworkRegistry, sandbox_id: str, own: str = "") -> Path:
    path = registry.hosts_file(sandbox_id)
    path.write_text(own or f"127.0.0.1\tlocalhost\n127.0.1.1\t{sandbox_id}\n")
    return path


def test_networks_get_subnets_of_their_own_and_names_are_unique(
        registry: networks.NetworkRegistry) -> None:
    first = trio.run(registry.create, "a")
    second = trio.run(registry.create, "b")
    assert (first["subnet"], second["subnet"]) == ("10.89.0.0/24", "10.89.1.0/24")
    assert trio.run(registry.create, "a") == first  # looked up, not made again
    with pytest.raises(AlreadyExists):
        trio.run(lambda: registry.create("a", must_create=True))
    with pytest.raises(NotFound):
        registry.info("c")
    assert [n["name"] for n in registry.infos()] == ["a", "b"]
    # the records outlive the daemon
    again = networks.NetworkRegistry(registry.records_dir.parent, registry.netns_dir.parent,
                                     registry.hosts_file)
    assert [n["subnet"] for n in again.infos()] == ["10.89.0.0/24", "10.89.1.0/24"]


def test_members_get_addresses_round_robin_and_names(
        registry: networks.NetworkRegistry) -> None:
    trio.run(registry.create, "shop")
    join = trio.run(registry.reserve, NetworkAttachment(name="shop", aliases=["db", "db"]),
                    "sb-1", "store")
    assert (join.address, join.prefixlen, join.host_interface) == ("10.89.0.2", 24, "m2")
    assert registry.info("shop")["members"] == [
        {"sandbox_id": "sb-1", "address": "10.89.0.2", "names": ["db", "store", "sb-1"]}]
    trio.run(registry.leave, "sb-1")
    assert registry.left == [(join.netns.name, "m2")]  # type: ignore[attr-defined]
    # the address just given back is not handed out again at once
    later = trio.run(registry.reserve, NetworkAttachment(name="shop"), "sb-2", None)
    assert later.address == "10.89.0.3"
    with pytest.raises(NotFound):
        trio.run(registry.reserve, NetworkAttachment(name="nope"), "sb-3", None)


def test_a_full_network_is_exhausted(registry: networks.NetworkRegistry) -> None:
    trio.run(registry.create, "full")
    span = networks.LAST_HOST - networks.FIRST_HOST + 1
    addresses = {trio.run(registry.reserve, NetworkAttachment(name="full"), f"sb-{i}",
                          None).address for i in range(span)}
    assert len(addresses) == span == 253
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network("10.89.0.0/24")
               for a in addresses)
    with pytest.raises(Exhausted):
        trio.run(registry.reserve, NetworkAttachment(name="full"), "sb-x", None)


def test_hosts_files_are_rewritten_on_join_and_leave(
        registry: networks.NetworkRegistry) -> None:
    trio.run(registry.create, "shop")
    first = trio.run(registry.reserve, NetworkAttachment(name="shop", aliases=["web"]),
                     "sb-1", None)
    first_hosts = _hosts(registry, "sb-1")
    trio.run(registry.joined, "sb-1")
    trio.run(registry.reserve, NetworkAttachment(name="shop", aliases=["db"]), "sb-2", None)
    entries = registry.hosts_entries(first.network_id)
    assert entries == "# hutch network shop\n10.89.0.2\tweb sb-1\n10.89.0.3\tdb sb-2\n"
    _hosts(registry, "sb-2", "127.0.0.1\tlocalhost\n" + entries)
    trio.run(registry.joined, "sb-2")
    assert first_hosts.read_text() == \
        "127.0.0.1\tlocalhost\n127.0.1.1\tsb-1\n" + entries
    trio.run(registry.leave, "sb-2")
    assert first_hosts.read_text().endswith("# hutch network shop\n10.89.0.2\tweb sb-1\n")
    assert "db" not in first_hosts.read_text()


def test_rewrite_hosts_file_keeps_what_precedes_the_mark(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text("own line\n# hutch network x\n1.2.3.4\told\n")
    networks.rewrite_hosts_file(path, "# hutch network x\n5.6.7.8\tnew\n")
    assert path.read_text() == "own line\n# hutch network x\n5.6.7.8\tnew\n"
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(OSError):
        networks.rewrite_hosts_file(link, "x\n")


def test_busy_networks_are_not_deleted(registry: networks.NetworkRegistry) -> None:
    trio.run(registry.create, "busy")
    trio.run(registry.reserve, NetworkAttachment(name="busy"), "sb-1", None)
    with pytest.raises(Conflict, match="sb-1"):
        trio.run(registry.delete, "busy", lambda sandbox_id: True)
    trio.run(registry.delete, "busy", lambda sandbox_id: False)  # it ended: let go
    assert registry.infos() == []
    assert list(registry.records_dir.iterdir()) == []
    assert trio.run(registry.create, "next")["subnet"] == "10.89.0.0/24"


def test_recover_lets_go_of_ended_members(registry: networks.NetworkRegistry) -> None:
    trio.run(registry.create, "n")
    for sandbox_id in ("sb-1", "sb-2"):
        trio.run(registry.reserve, NetworkAttachment(name="n"), sandbox_id, None)
    trio.run(registry.recover, lambda sandbox_id: sandbox_id == "sb-2")
    assert [m["sandbox_id"] for m in registry.info("n")["members"]] == ["sb-2"]


def test_members_with_outbound_access_reach_their_subnet_on_eth0_only() -> None:
    rules = [line.strip() for line in outbound.ruleset(None, HOST, private="10.89.3.0/24")
             .splitlines()]
    accept = rules.index('oifname "eth0" ip daddr 10.89.3.0/24 accept')
    private = next(i for i, r in enumerate(rules) if "10.0.0.0/8" in r)
    assert accept < private and rules[private].endswith("reject")
    assert not any("10.89.3.0/24" in r for r in outbound.ruleset(None, HOST).splitlines())
