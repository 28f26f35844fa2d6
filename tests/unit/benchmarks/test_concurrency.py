"""benchmarks/concurrency.py: whose processes its memory figure counts."""

from __future__ import annotations

import pytest

from benchmarks import concurrency
from hutch.engine.kernel import userns


def test_a_users_subordinate_ids_are_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(userns, "subid_range",
                        lambda file, uid: userns.SubIdRange(1_000_000, 65_536))
    ours = concurrency._owned(1001)
    assert ours(1001) and ours(1_000_000) and ours(1_065_535)
    assert not ours(0) and not ours(1002) and not ours(999_999) and not ours(1_065_536)


def test_without_subordinate_ids_only_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(userns, "subid_range", lambda file, uid: None)
    ours = concurrency._owned(1001)
    assert ours(1001) and not ours(1_000_000)
