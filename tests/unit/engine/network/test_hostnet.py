"""hutch.engine.network.hostnet and the sandbox firewall built from it (outbound.ruleset).

``hostnet.read`` is checked against ``ip -j addr``/``ip -j route`` on this machine; the
ruleset against made-up hosts whose LAN and public address lie outside every range the
firewall named before (what let a sandbox reach the host's ``192.0.2.2``).  Loading and
enforcing the rules for real: tests/root/test_root_netns.py, tests/security/
test_network_host.py.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path

import pytest

from hutch.engine.errors import Invalid
from hutch.engine.network import hostnet, outbound


def _ip(*args: str) -> list[dict[str, object]]:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True)
    result: list[dict[str, object]] = json.loads(out.stdout)
    return result


def test_read_finds_every_address_of_every_interface() -> None:
    host = hostnet.read()
    expected = {ipaddress.ip_address(a["local"]) for link in _ip("addr")
                for a in link["addr_info"]}  # type: ignore[attr-defined]
    assert set(host.addresses) == expected
    for link in _ip("addr"):
        for a in link["addr_info"]:  # type: ignore[attr-defined]
            prefix = ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False)
            assert prefix in host.attached


def test_read_finds_the_routes_without_a_gateway() -> None:
    attached = set(hostnet.read().attached)
    for family in ("-4", "-6"):
        for route in _ip(family, "route", "show", "table", "main"):
            if route["dst"] == "default" or "gateway" in route or "nexthops" in route:
                continue
            if route.get("type", "unicast") != "unicast":
                continue
            dst = str(route["dst"])
            if "/" not in dst:
                dst += "/32" if family == "-4" else "/128"
            assert ipaddress.ip_network(dst) in attached, route


#: a host whose LAN and public address no fixed list would name
HOST = hostnet.HostNetworks(
    addresses=(ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("203.0.113.7"),
               ipaddress.ip_address("198.51.100.9"), ipaddress.ip_address("2001:db8::7")),
    attached=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("203.0.113.0/24"),
              ipaddress.ip_network("198.51.100.1/32"), ipaddress.ip_network("2001:db8::/64")),
)


def _rules(allowlist: list[str] | None) -> list[str]:
    return [line.strip() for line in outbound.ruleset(allowlist, HOST).splitlines()]


def _first_match(rules: list[str], needle: str) -> str:
    """The first rule naming ``needle`` in an ``ip daddr`` or ``ip6 daddr`` match."""
    for rule in rules:
        if rule.startswith(("ip daddr", "ip6 daddr")) and f" {needle}" in rule.replace(
                "{", " ").replace(",", " "):
            return rule
    raise AssertionError(f"no rule names {needle}")


@pytest.mark.parametrize("allowlist", [None, ["0.0.0.0/0"], ["203.0.113.0/24"]])
def test_the_hosts_own_addresses_are_refused_before_any_accept(
        allowlist: list[str] | None) -> None:
    rules = _rules(allowlist)
    host_rule = _first_match(rules, "203.0.113.7")
    assert host_rule.endswith("reject") and "198.51.100.9" in host_rule
    assert "10.0.2.0/24" in host_rule  # slirp4netns's alias of the host, 10.0.2.2
    accepts = [r for r in rules if r.endswith("accept") and "daddr {" in r]
    assert all(rules.index(host_rule) < rules.index(r) for r in accepts)
    v6 = _first_match(rules, "2001:db8::7")
    assert v6.endswith("reject") and "::ffff:0:0/96" in v6 and "64:ff9b::/96" in v6
    assert "meta nfproto ipv6 reject" in rules


def test_the_attached_networks_are_refused_by_default_whatever_their_range() -> None:
    rule = _first_match(_rules(None), "203.0.113.0/24")
    assert rule.endswith("reject") and "198.51.100.1/32" in rule
    assert "169.254.0.0/16" in rule and "10.0.0.0/8" in rule


def test_an_allowlist_may_admit_the_lan_but_not_the_host() -> None:
    rules = _rules(["203.0.113.0/24"])
    accept = rules.index("ip daddr { 203.0.113.0/24 } accept")
    assert rules[accept + 1] == "reject"  # and nothing else
    assert _first_match(rules, "203.0.113.7").endswith("reject")  # the host, before it
    assert _first_match(rules, "203.0.113.7") != rules[accept]


@pytest.mark.parametrize(("allowlist", "dns"), [
    (None, True), ([], False), (["1.1.1.1/32"], False), (["10.0.2.3/32"], True),
    (["10.0.0.0/8"], True), (["0.0.0.0/0"], True), (["10.0.2.2/32"], False)])
def test_dns_goes_only_where_the_allowlist_permits(allowlist: list[str] | None,
                                                   dns: bool) -> None:
    rules = _rules(allowlist)
    assert outbound.dns_allowed(allowlist) is dns
    assert ("ip daddr 10.0.2.3 udp dport 53 accept" in rules) is dns
    assert ("ip daddr 10.0.2.3 tcp dport 53 accept" in rules) is dns


def test_views_make_a_sandbox_stale_when_a_watched_file_changes(tmp_path: Path) -> None:
    """A sandbox made ahead of time has the host's CA bundle of then bound into it: a
    bundle replaced since (a CA distrusted) makes it stale, as a new host network does."""
    bundle = tmp_path / "ca.crt"
    bundle.write_text("old CA\n")
    views = hostnet.Views(files=(bundle,))
    assert views.made("sb-a", views.snapshot())
    assert views.current("sb-a")
    replacement = tmp_path / "ca.crt.new"
    replacement.write_text("new CA\n")
    replacement.replace(bundle)  # as update-ca-certificates does
    assert not views.current("sb-a")
    before = views.snapshot()
    bundle.unlink()  # changed while the next one was made: not handed out
    assert not views.made("sb-b", before)
    assert not views.current("sb-b")
    views.forget("sb-a")
    assert not views.current("sb-a")


def test_an_allowlist_names_at_most_allowlist_max_networks() -> None:
    many = [f"10.{i // 256}.{i % 256}.0/24" for i in range(outbound.ALLOWLIST_MAX)]
    assert len(outbound.check_allowlist(many)) == outbound.ALLOWLIST_MAX
    with pytest.raises(Invalid, match="at most 1024"):
        outbound.check_allowlist([*many, "192.0.2.0/24"])
