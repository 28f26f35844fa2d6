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
from hutch.engine.idslices import NOBODY, Slice
from hutch.engine.volumeids import plan, shifted

A, B = Slice(70000, 1024), Slice(80000, 2048)


def test_volumes_never_mounted_get_a_new_slice_and_all_move() -> None:
    assert plan({"x": None, "y": None}, set(), 1024) == (None, 1024, ["x", "y"])


def test_a_sandbox_joins_the_slice_its_volumes_have() -> None:
    assert plan({"x": (A, False)}, {"x"}, 1024) == (A, 1024, [])
    # an unmounted volume with another slice, or none, moves to it
    assert plan({"x": (A, False), "y": (Slice(90000, 1024), False), "z": None},
                {"x"}, 1024) == (A, 1024, ["y", "z"])
    # a mixed one is moved again (from the engine's ids written since)
    assert plan({"x": (A, True)}, {"x"}, 1024) == (A, 1024, ["x"])


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


def test_shifted_keeps_each_id_as_the_sandbox_sees_it() -> None:
    assert shifted(A.base + 5, [A], B) == B.base + 5
    assert shifted(A.base + A.size, [A], B) == B.base + B.size  # nobody
    assert shifted(0, [], B) == B.base  # the engine's own root
    assert shifted(1000, [A], B) == B.base + 1000  # written by a sandbox sharing its ids
    assert shifted(NOBODY, [], B) == B.base + B.size
    assert shifted(B.base + 7, [A], B) == B.base + 7  # moved already
    assert shifted(5000, [], A) == 5000  # no sandbox's id: left as it is
    # a move cut short: from its origin, or from the slice it was going to
    C = Slice(90000, 1024)
    assert shifted(A.base + 3, [C, A], B) == shifted(C.base + 3, [C, A], B) == B.base + 3


SHIFT = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from hutch.engine.idslices import Slice
    from hutch.engine.volumeids import shift_owners
    tree = Path(sys.argv[1])
    print(shift_owners(tree, [], Slice(int(sys.argv[2]), 1024)))
    print(json.dumps({str(p.relative_to(tree)): [p.lstat().st_uid, p.lstat().st_gid,
                                                 p.lstat().st_mode & 0o7777]
                      for p in [tree, *tree.rglob("*")]}))
""")


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
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--map-auto", "--",
                            "cat", "/proc/self/uid_map"], capture_output=True, text=True)
    mapped = sum(int(line.split()[2]) for line in probe.stdout.splitlines())
    if probe.returncode != 0 or mapped < base + 1025:
        pytest.skip(f"no subordinate range to map here: {probe.stderr.strip()}")
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--map-auto", "--", sys.executable, "-c",
         SHIFT, str(tree), str(base)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert result.returncode == 0, result.stderr
    changed, owners = result.stdout.splitlines()
    found = json.loads(owners)
    assert int(changed) == 7  # . d d/e d/e/f run to-dir to-file
    assert {found[p][:2] == [base, base] for p in found} == {True}, found
    assert found["run"][2] == 0o4755  # set-user-id kept
    assert (outside.stat().st_uid, (outside / "host-file").stat().st_uid) == (os.getuid(),) * 2
