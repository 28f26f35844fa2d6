"""Which slice a sandbox of volumes gets and which volumes move (``plan``), what each id
becomes (``shifted``), and the walk that moves a tree's owners (``shift_owners``), run in
a real user namespace with a subordinate range (``unshare --map-auto``), as the engine's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hutch.engine.errors import Conflict
from hutch.engine.isolation.idslices import NOBODY, Slice
from hutch.engine.storage.volumeids import plan, shifted

A, B = Slice(70000, 1024), Slice(80000, 2048)


def test_volumes_never_mounted_get_a_new_slice_and_all_move() -> None:
    assert plan({"x": None, "y": None}, set(), 1024) == (None, 1024, ["x", "y"])


def test_a_sandbox_joins_the_slice_its_volumes_have() -> None:
    assert plan({"x": (A, False)}, {"x"}, 1024) == (A, 1024, [])
    # an unmounted volume with another slice, or none, moves to it
    assert plan({"x": (A, False), "y": (Slice(90000, 1024), False), "z": None},
                {"x"}, 1024) == (A, 1024, ["y", "z"])
    # a mixed one is moved again (from the engine's ids written since), once nothing
    # mounts it: a running sandbox never sees its volume's files change owners
    assert plan({"x": (A, True)}, set(), 1024) == (A, 1024, ["x"])
    assert plan({"x": (A, True)}, {"x"}, 1024) == (A, 1024, [])


def test_the_larger_slice_wins_and_sizes_only_grow() -> None:
    assert plan({"x": (A, False), "y": (B, False)}, set(), 1024) == (B, 2048, ["x"])
    # an image that needs more ids than either: a new slice for both
    assert plan({"x": (A, False), "y": (B, False)}, set(), 4096) == (None, 4096, ["x", "y"])


def test_busy_volumes_of_different_slices_conflict() -> None:
    with pytest.raises(Conflict, match="different user ids"):
        plan({"x": (A, False), "y": (B, False)}, {"x", "y"}, 1024)
    with pytest.raises(Conflict, match="needs 4096 user ids"):
        plan({"x": (A, False)}, {"x"}, 4096)
    with pytest.raises(Conflict, match="needs 2048 user ids"):  # y cannot shrink into A
        plan({"x": (A, False), "y": (B, False)}, {"x"}, 1024)
    with pytest.raises(Conflict, match="ids this engine cannot give"):  # no slice to keep
        plan({"x": None}, {"x"}, 1024)


def test_shifted_keeps_each_id_as_the_sandbox_sees_it() -> None:
    assert shifted(A.base + 5, [A], B) == B.base + 5
    assert shifted(A.base + A.size, [A], B) == B.base + B.size  # nobody
    assert shifted(0, [], B) == B.base  # the engine's own root
    assert shifted(1000, [A], B) == B.base + 1000  # written by a sandbox sharing its ids
    assert shifted(NOBODY, [], B) == B.base + B.size
    assert shifted(B.base + 7, [A], B) == B.base + 7  # moved already
    # an id the new slice does not have becomes its nobody (not an id another may hold)
    assert shifted(5000, [], A) == A.base + A.size
    assert shifted(A.base + 5000, [A], B) == B.base + B.size
    # ids that look like the new slice's are kept only where the volume had it before
    assert shifted(B.base + 7, [], B, keep=False) == B.base + B.size
    # a move cut short: from its origin, or from the slice it was going to
    C = Slice(90000, 1024)
    assert shifted(A.base + 3, [C, A], B) == shifted(C.base + 3, [C, A], B) == B.base + 3


def _in_user_namespace(script: str, *args: str) -> str:
    """Run ``script`` as root of a new user namespace that maps the user's subordinate
    range too (ids 1.. of it), as the engine's does; its stdout."""
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--map-auto", "--",
                            "cat", "/proc/self/uid_map"], capture_output=True, text=True)
    mapped = sum(int(line.split()[2]) for line in probe.stdout.splitlines())
    if probe.returncode != 0 or mapped < 65536:
        pytest.skip(f"no subordinate range to map here: {probe.stderr.strip()}")
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--map-auto", "--", sys.executable, "-c",
         textwrap.dedent(script), *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[4])})
    assert result.returncode == 0, result.stderr
    return result.stdout


OWNERS = """
    def owners(tree):
        return {str(p.relative_to(tree)): [p.lstat().st_uid, p.lstat().st_gid,
                                           p.lstat().st_mode & 0o7777]
                for p in [tree, *tree.rglob("*")]}
"""

SHIFT = OWNERS + """
    import json, sys
    from pathlib import Path
    from hutch.engine.storage import volumeids
    from hutch.engine.isolation.idslices import Slice
    tree = Path(sys.argv[1])
    volumeids.MAX_MOVE_DEPTH = int(sys.argv[3])
    print(json.dumps([volumeids.shift_owners(tree, [], Slice(int(sys.argv[2]), 1024)),
                      owners(tree)]))
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux's unshare")
def test_shift_owners_moves_the_tree_not_what_links_point_to(tmp_path: Path) -> None:
    tree, outside = tmp_path / "vol", tmp_path / "outside"
    (tree / "d" / "e").mkdir(parents=True)
    outside.mkdir()
    (outside / "host-file").write_text("h")
    (tree / "d" / "e" / "f").write_text("x")
    (tree / "run").write_text("#!/bin/sh\n")
    (tree / "run").chmod(0o4755)
    (tree / "to-dir").symlink_to(outside)
    (tree / "to-file").symlink_to(outside / "host-file")
    base = 2048
    (changed, skipped), found = json.loads(_in_user_namespace(SHIFT, str(tree), str(base),
                                                              "128"))
    assert (changed, skipped) == (7, 0)  # . d d/e d/e/f run to-dir to-file
    assert {found[p][:2] == [base, base] for p in found} == {True}, found
    assert found["run"][2] == 0o4755  # set-user-id kept
    assert (outside.stat().st_uid, (outside / "host-file").stat().st_uid) == (os.getuid(),) * 2


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux's unshare")
def test_shift_owners_leaves_what_is_too_deep_and_says_so(tmp_path: Path) -> None:
    (tmp_path / "vol" / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "vol" / "a" / "b" / "c" / "f").write_text("x")
    (changed, skipped), found = json.loads(_in_user_namespace(
        SHIFT, str(tmp_path / "vol"), "2048", "2"))
    assert (changed, skipped) == (3, 1), found  # . a a/b moved; a/b/c (and below) not
    assert found["a/b/c"][0] == found["a/b/c/f"][0] == 0


SCENARIO = OWNERS + """
    import json, sys, trio
    from pathlib import Path
    from hutch.engine.storage import volumeids
    from hutch.engine.errors import Conflict
    from hutch.engine.isolation.idslices import SliceAllocator
    from hutch.engine.storage.store import Store
    root = Path(sys.argv[1])
    store = Store(root / "state.db")
    for name in ("x", "y", "z"):
        store.volume(name, create=True)
        (root / name / "sub").mkdir(parents=True)
    slices = SliceAllocator(2048, 65535)
    ids = volumeids.VolumeIds(store, slices, lambda name: root / name)
    seen = {}

    async def main():
        one = await ids.enter("sb-1", ["x", "y"], 1024)  # new volumes: one new slice
        seen["joined"] = owners(root / "x")["sub"][0] == owners(root / "y")["sub"][0] \
            == one.base
        with ids.writing(store.volume("z", create=False)):  # a files call writes in z
            try:
                await ids.enter("sb-2", ["x", "z"], 1024)
                seen["refused while written"] = False
            except Conflict:
                seen["refused while written"] = True
        try:  # y is mounted by sb-1: it cannot move to another slice
            await ids.enter("sb-3", ["y"], 4096)
            seen["busy refused"] = False
        except Conflict:
            seen["busy refused"] = True
        ids.leave("sb-1")
        volumeids.MAX_MOVE_DEPTH = 0  # y's "sub" cannot move: the move stays unfinished
        two = await ids.enter("sb-4", ["y"], 4096)
        row = store.volume_ids()[store.volume("y", create=False)["volume_id"]]
        seen["unfinished"] = (row.mixed, row.prev) == (True, [(one.base, one.size)])
        seen["old slice still held"] = one.base in slices.taken  # (x keeps it too)
        ids.leave("sb-4")
        volumeids.MAX_MOVE_DEPTH = 128
        await ids.enter("sb-5", ["y"], 1024)  # finishes it
        row = store.volume_ids()[store.volume("y", create=False)["volume_id"]]
        seen["finished"] = (row.base, row.mixed, row.prev) == (two.base, False, []) and \
            owners(root / "y")["sub"][0] == two.base
        ids.leave("sb-5")
        for name in ("x", "y"):
            row = store.volume_ids()[store.volume(name, create=False)["volume_id"]]
            store.delete_volume(name)
            ids.forget(row)
        seen["all freed"] = slices.taken == {}

        # a slice goes back only when no record names it, and only once: p and q share
        # one (o), r has a larger one (t); q moves to t while p keeps o
        for name in ("p", "q", "r", "s"):
            store.volume(name, create=True)
            (root / name).mkdir()
        o = await ids.enter("sb-6", ["p", "q"], 1024)
        ids.leave("sb-6")
        t = await ids.enter("sb-7", ["r"], 2048)
        ids.leave("sb-7")
        await ids.enter("sb-8", ["q", "r"], 1024)
        ids.leave("sb-8")
        seen["kept while named"] = o.base in slices.taken
        row = store.volume_ids()[store.volume("p", create=False)["volume_id"]]
        store.delete_volume("p")
        ids.forget(row)
        other = slices.take(1024)  # a sandbox without volumes gets o's ids now
        await ids.enter("sb-9", ["q", "r", "s"], 1024)  # moves s: frees nothing of others
        seen["freed once"] = other == o and slices.taken.get(o.base) == other \
            and t.base in slices.taken

    trio.run(main)
    print(json.dumps(seen))
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux's unshare")
def test_volume_ids_join_refuse_resume_and_free(tmp_path: Path) -> None:
    seen = json.loads(_in_user_namespace(SCENARIO, str(tmp_path)))
    assert seen == dict.fromkeys(seen, True) and len(seen) == 9, seen
