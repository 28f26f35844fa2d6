"""``hutch doctor``'s probe of private networks: a real bridge and veth pair made in a new
user namespace, and the warning (with its fix) when the kernel refuses them."""

from __future__ import annotations

import pytest

from hutch.tools import doctor


def test_private_networks_probe_makes_a_bridge_here() -> None:
    check = doctor.check_private_networks()
    assert (check.status, check.detail) == ("ok", "bridge and veth pairs in a user namespace")


def test_a_refused_probe_is_a_warning_naming_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "BRIDGE_PROBE", "raise SystemExit('RTNETLINK: no bridge')")
    check = doctor.check_private_networks()
    assert check.status == "warn" and "RTNETLINK: no bridge" in check.detail
    assert check.fix == "as root: modprobe bridge veth"
