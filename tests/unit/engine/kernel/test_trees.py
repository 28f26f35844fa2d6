"""Trees a sandbox wrote are removed and walked at any depth (Python 3.11's rmtree and
os.walk recurse once per level and raised RecursionError at about 1000)."""

from __future__ import annotations

import os
from pathlib import Path

from hutch.engine.kernel import trees


def _deep(root: Path, depth: int) -> Path:
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(depth):  # relative steps: the full path outgrows PATH_MAX
            os.mkdir("a", dir_fd=fd)
            nfd = os.open("a", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        os.close(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
    finally:
        os.close(fd)
    return root


def test_a_tree_deeper_than_pythons_recursion_is_walked_and_removed(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    tree = _deep(tmp_path / "t", 2000)
    assert sum(1 for _ in trees.walk_stats(tree)) == 2001
    assert trees.remove_tree(tree)
    assert not tree.exists()


def test_removal_does_not_follow_symlinks(tmp_path: Path) -> None:
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "file").write_text("x")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "link").symlink_to(keep)
    assert trees.remove_tree(tree) and (keep / "file").read_text() == "x"
    assert trees.remove_tree(tmp_path / "missing")
