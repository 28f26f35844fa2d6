"""Disk slots: claims shared by every engine of the user, emptying, exhaustion.  (The
slots are plain directories here; tests/security/test_disk.py uses the real, mounted ones.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from hutch.engine.diskslots import CLAIM, DiskSlots
from hutch.engine.errors import Exhausted


def _slots(tmp_path: Path, owner: str, count: int = 2) -> DiskSlots:
    for n in range(count):
        (tmp_path / str(n)).mkdir(exist_ok=True)
    (tmp_path / "images").mkdir(exist_ok=True)  # not a slot
    return DiskSlots(tmp_path, owner, mounts_only=False)


def test_slots_are_claimed_once_across_engines(tmp_path: Path) -> None:
    ours, theirs = _slots(tmp_path, "/data/a"), _slots(tmp_path, "/data/b")
    assert [p.name for p in ours.slots] == ["0", "1"]
    first = ours.take("sb-1")
    assert first is not None and (first / CLAIM / "by").read_text() == "/data/a sb-1\n"
    second = theirs.take("sb-2")
    assert second is not None and second != first
    with pytest.raises(Exhausted, match="disk slots"):
        ours.take("sb-3")
    (first / "upper" / "deep").mkdir(parents=True)
    (first / "upper" / "deep" / "file").write_bytes(b"x" * 4096)
    ours.give_back(first)
    assert not (first / "upper").exists() and not (first / CLAIM).exists()
    assert ours.take("sb-4") == first


def test_recovery_empties_only_this_engines_leftovers(tmp_path: Path) -> None:
    crashed, other = _slots(tmp_path, "/data/a", 3), _slots(tmp_path, "/data/b", 3)
    kept, left, foreign = crashed.take("sb-kept"), crashed.take("sb-left"), other.take("x")
    assert kept and left and foreign
    for slot in (kept, left, foreign):
        (slot / "upper").mkdir()
    restarted = _slots(tmp_path, "/data/a", 3)
    restarted.hold(kept, "sb-kept")
    restarted.empty_free()
    assert (kept / "upper").exists() and (foreign / "upper").exists()
    assert not (left / "upper").exists() and not (left / CLAIM).exists()


def test_no_slots_means_no_bound(tmp_path: Path) -> None:
    none = DiskSlots(tmp_path / "missing")
    assert not none.enabled and none.take("sb-1") is None
