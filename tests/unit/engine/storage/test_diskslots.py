"""Disk slots: claims shared by every engine of the user, emptying, exhaustion.  (The
slots are plain directories here; tests/security/test_disk.py uses the real, mounted ones.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from hutch.engine.errors import Exhausted
from hutch.engine.storage.diskslots import CLAIM, DiskSlots


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


def test_volumes_live_in_slots_of_their_own(tmp_path: Path) -> None:
    from hutch.engine.storage.store import Store
    from hutch.engine.storage.volumes import VolumeService

    slots_dir, data = tmp_path / "slots", tmp_path / "data"
    data.mkdir()
    store = Store(data / "state.db")

    def service() -> VolumeService:
        for n in range(2):
            (slots_dir / str(n)).mkdir(parents=True, exist_ok=True)
        return VolumeService(store, data, DiskSlots(slots_dir, str(data), mounts_only=False,
                                                    contents=("data",)))

    volumes = service()
    record = volumes.lookup("models", create=True)
    link = volumes.directory(record)
    assert link.is_symlink() and link.resolve().parent.parent == slots_dir
    (link / "weights").write_bytes(b"w")
    assert volumes.lookup("models", create=False) == record  # the same slot, kept
    restarted = service()  # a restarted engine finds it held
    assert restarted.slots is not None and len(restarted.slots.taken) == 1
    restarted.lookup("other", create=True)
    with pytest.raises(Exhausted):
        restarted.lookup("third", create=True)
    slot = link.resolve().parent
    restarted.remove_files(trio.run(restarted.delete, "models"))
    assert not link.exists() and not (slot / "data").exists() and not (slot / CLAIM).exists()
    # a volume forgotten as the engine was killed: the next engine removes its files
    record = restarted.lookup("fourth", create=True)
    store.delete_volume("fourth")
    left = restarted.directory(record).resolve().parent
    again = service()
    assert not again.directory(record).exists() and not (left / CLAIM).exists()
    assert again.slots is not None and len(again.slots.taken) == 1  # "other" only


def test_slots_are_the_users_alone(tmp_path: Path) -> None:
    """A sandbox's files in a slot are no other host user's to read (the data directory,
    where they were before, is 0700)."""
    import stat

    slots = _slots(tmp_path, "/data/a")
    for slot in slots.slots:
        assert stat.S_IMODE(slot.stat().st_mode) == 0o700


def test_a_claim_naming_nobody_is_left_alone_until_it_is_stale(tmp_path: Path) -> None:
    """Another engine writes its name just after its mkdir: a claim caught between the
    two is not emptied, unless it stayed nameless for longer than STALE_CLAIM."""
    import os
    import time

    from hutch.engine.storage.diskslots import STALE_CLAIM

    slots = _slots(tmp_path, "/data/a", 2)
    fresh, old = slots.slots
    for slot in (fresh, old):
        (slot / CLAIM).mkdir()
        (slot / "upper").mkdir()
    past = time.time() - STALE_CLAIM - 5
    os.utime(old / CLAIM, (past, past))
    slots.empty_free()
    assert (fresh / CLAIM).exists() and (fresh / "upper").exists()
    assert not (old / CLAIM).exists() and not (old / "upper").exists()
