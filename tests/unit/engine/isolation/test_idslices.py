"""Slices of the engine's ids for sandboxes: sizes, first-fit allocation, recovery, the
exhaustion error, and reading the engine's own map."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from hutch.engine.errors import Exhausted
from hutch.engine.isolation import idslices
from hutch.engine.isolation.idslices import NOBODY, Slice, SliceAllocator


def test_a_slice_maps_its_ids_and_nobody_apart() -> None:
    piece = Slice(4096, 1024)
    assert piece.map_lines() == f"0 4096 1024\n{NOBODY} 5120 1\n"
    assert piece.span == 1025 and piece.root == 4096
    assert Slice.from_record(piece.record()) == piece
    assert Slice.from_record(None) is None and Slice.from_record({"base": "1"}) is None


@pytest.mark.parametrize(("max_id", "size"), [(0, 1024), (1000, 1024), (1023, 1024),
                                               (1024, 1025), (65533, 65534), (70000, 65534)])
def test_sizes_cover_the_image_ids(max_id: int, size: int) -> None:
    assert idslices.size_for(max_id) == size


def test_first_fit_reuses_what_was_given_back_and_never_overlaps() -> None:
    ids = SliceAllocator(100, 100 + 3 * 1025 - 1)
    a, b, c = (ids.take(1024) for _ in range(3))
    assert [p.base for p in (a, b, c)] == [100, 1125, 2150]
    with pytest.raises(Exhausted, match="usermod --add-subuids"):
        ids.take(1024)
    ids.give_back(b)
    again = ids.take(1024)
    assert again.base == b.base
    ids.give_back(a)
    with pytest.raises(Exhausted):
        ids.take(2000)  # a's hole is too small for it
    spans = sorted((p.base, p.base + p.span) for p in ids.taken.values())
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))


def test_recovered_slices_are_held_and_overlaps_refused() -> None:
    ids = SliceAllocator(0, 10_000)
    assert ids.hold(Slice(2000, 1024))
    assert ids.hold(Slice(2000, 1024))  # the same one twice: a restart's second look
    assert not ids.hold(Slice(2500, 1024))
    assert ids.take(1024).base == 0
    assert ids.take(1024).base == 3025


def test_the_engine_map_decides_the_range(tmp_path: Path) -> None:
    def proc(uid_map: str) -> Path:
        (tmp_path / "uid_map").write_text(uid_map)
        (tmp_path / "gid_map").write_text(uid_map)
        return tmp_path

    small = idslices.allocator_for_engine("subuid", proc("0 1000 1\n1 100000 65536\n"))
    assert small is not None and (small.low, small.high) == (idslices.LOW_SMALL_RANGE, 65536)
    # 61 sandboxes of a debian_slim-sized image fit Debian's default range
    count = 0
    while True:
        try:
            small.take(1024)
        except Exhausted:
            break
        count += 1
    assert count == 61
    large = idslices.allocator_for_engine("subuid", proc("0 1000 1\n1 200000 1000000\n"))
    assert large is not None and large.low == idslices.LOW_LARGE_RANGE
    assert idslices.allocator_for_engine("single", proc("0 1000 1\n")) is None
    none = tmp_path / "no-subuid"
    none.write_text("")
    assert idslices.allocator_for_engine("root", proc("0 0 4294967295\n"),
                                         (str(none), str(none))) is None
    assert idslices.allocator_for_engine("subuid", proc("0 1000 1\n1 100000 2000\n")) is None


def test_capacity_matches_the_allocator() -> None:
    assert idslices.capacity(65536) == 61
    assert idslices.capacity(1048576) == 959
    assert idslices.capacity(2000) == 0


def test_root_gives_slices_of_roots_own_range(tmp_path: Path) -> None:
    sub = tmp_path / "subuid"
    sub.write_text("someone:100000:65536\nroot:2000000000:1048576\n")
    got = idslices.allocator_for_engine("root", tmp_path, (str(sub), str(sub)))
    assert got is not None and (got.low, got.high) == (2000000000, 2001048575)
    assert got.take(1024).base == 2000000000
    sub.write_text("someone:100000:65536\n")
    assert idslices.allocator_for_engine("root", tmp_path, (str(sub), str(sub))) is None
