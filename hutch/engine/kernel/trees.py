"""Removing and walking directory trees that a sandbox (or an image) wrote.

Why not ``shutil.rmtree`` and ``os.walk``: on Python 3.11 both recurse once per directory
level, so a tree 1500 directories deep, one shell loop in a sandbox, raised
``RecursionError`` (not an ``OSError``: ``ignore_errors`` lets it through) in the engine
when the sandbox ended, took the daemon down, and took it down again at every start while
the tree was still there (found by a red-team run, tests/security/test_disk.py).  Removal
is ``rm -rf --one-file-system`` (coreutils keeps its own stack: any depth; it never follows
a symlink nor enters another mount); the walk keeps an explicit stack.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("hutch.trees")


def remove_tree(path: Path) -> bool:
    """Remove ``path`` and everything under it (blocking); whether it is gone."""
    if not os.path.lexists(path):
        return True
    result = subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)],
                            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    if result.returncode != 0:
        log.warning("removing %s: %s", path, result.stderr.strip()[-500:])
    return not os.path.lexists(path)


def walk_stats(tree: Path) -> Iterator[os.stat_result]:
    """The ``lstat`` of every entry under ``tree`` (symlinks not followed), at any depth."""
    stack = [str(tree)]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as entries:
                for item in entries:
                    try:
                        st = item.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    yield st
                    if item.is_dir(follow_symlinks=False):
                        stack.append(item.path)
        except OSError:
            continue
