"""hutch.sdk.localfiles: deterministic build-context tars, ignore rules and one-file tars."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from hutch.exception import InvalidError
from hutch.sdk.localfiles import tar_directory, tar_file


def _members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


def _names(data: bytes) -> list[str]:
    return [m.name for m in _members(data)]


def _content(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        f = tar.extractfile(name)
        assert f is not None, name
        return f.read()


def _tree(root: Path, order: tuple[str, ...] = ("b.txt", "a.txt")) -> Path:
    root.mkdir()
    for name in order:
        (root / name).write_text(name)
    (root / "a.txt").chmod(0o600)
    (root / "b.txt").chmod(0o644)
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "sub").mkdir()
    (root / "sub").chmod(0o750)
    (root / "sub" / "inner.txt").write_text("inner")
    (root / "sub" / "empty").mkdir()
    (root / "link").symlink_to("a.txt")
    return root


def _touch_all(root: Path, when: int) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (when, when), follow_symlinks=False)
    os.utime(root, (when, when))


# determinism ------------------------------------------------------------------------------
def test_same_tree_same_bytes_whatever_the_mtimes(tmp_path: Path) -> None:
    root = _tree(tmp_path / "src")
    first = tar_directory(root)
    _touch_all(root, 1_234_567_890)
    assert tar_directory(root) == first
    _touch_all(root, 1_700_000_000)
    assert tar_directory(root) == first


def test_equal_trees_made_in_another_order_give_equal_bytes(tmp_path: Path) -> None:
    one = tar_directory(_tree(tmp_path / "one", ("a.txt", "b.txt")))
    two = tar_directory(_tree(tmp_path / "two", ("b.txt", "a.txt")))
    assert one == two
    (tmp_path / "two" / "b.txt").write_text("changed")
    assert tar_directory(tmp_path / "two") != one


def test_mode_changes_change_the_bytes(tmp_path: Path) -> None:
    root = _tree(tmp_path / "src")
    first = tar_directory(root)
    (root / "b.txt").chmod(0o640)
    assert tar_directory(root) != first


def test_entries_owner_mtime_mode(tmp_path: Path) -> None:
    data = tar_directory(_tree(tmp_path / "src"))
    members = {m.name: m for m in _members(data)}
    for m in members.values():
        assert (m.uid, m.gid) == (0, 0), m.name
        assert (m.uname, m.gname) == ("", ""), m.name
        assert m.mtime == 0, m.name
    assert members["a.txt"].mode == 0o600
    assert members["b.txt"].mode == 0o644
    assert members["run.sh"].mode == 0o755
    assert members["sub"].isdir()
    assert members["sub"].mode == 0o750
    assert members["sub/empty"].isdir()
    assert _content(data, "sub/inner.txt") == b"inner"
    assert _content(data, "run.sh") == b"#!/bin/sh\n"


def test_sorted_names_without_root(tmp_path: Path) -> None:
    names = _names(tar_directory(_tree(tmp_path / "src")))
    assert names == ["a.txt", "b.txt", "link", "run.sh", "sub", "sub/empty", "sub/inner.txt"]


def test_special_mode_bits_kept(tmp_path: Path) -> None:
    root = tmp_path / "src"
    root.mkdir()
    (root / "suid").write_text("x")
    (root / "suid").chmod(0o4755)
    (root / "sticky").mkdir()
    (root / "sticky").chmod(0o1777)
    members = {m.name: m for m in _members(tar_directory(root))}
    assert members["suid"].mode == 0o4755
    assert members["sticky"].mode == 0o1777


def test_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert _members(tar_directory(tmp_path / "empty")) == []


# symlinks ---------------------------------------------------------------------------------
def test_symlinks_are_kept_as_links(tmp_path: Path) -> None:
    root = _tree(tmp_path / "src")
    (root / "dangling").symlink_to("/no/such/target")
    (root / "dirlink").symlink_to("sub")
    (root / "outside").symlink_to(tmp_path)
    members = {m.name: m for m in _members(tar_directory(root))}
    for name, target in (("link", "a.txt"), ("dangling", "/no/such/target"),
                         ("dirlink", "sub"), ("outside", str(tmp_path))):
        assert members[name].issym(), name
        assert members[name].linkname == target
    # links to directories are not followed
    assert not [n for n in members if n.startswith(("dirlink/", "outside/"))]


# ignore rules -----------------------------------------------------------------------------
def _ignore_tree(root: Path) -> Path:
    for rel in ("keep.py", "drop.pyc", "notes.txt", "sub/keep.py", "sub/drop.pyc",
                "sub/notes.txt", "build/out.bin", "build/deep/x.py", "sub/build/y.py",
                "node_modules/pkg/index.js"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)
    return root


def test_ignore_by_name_glob(tmp_path: Path) -> None:
    names = _names(tar_directory(_ignore_tree(tmp_path / "src"), ["*.pyc"]))
    assert "drop.pyc" not in names
    assert "sub/drop.pyc" not in names
    assert "keep.py" in names and "sub/keep.py" in names


def test_ignore_by_relative_path_glob(tmp_path: Path) -> None:
    names = _names(tar_directory(_ignore_tree(tmp_path / "src"), ["sub/*.txt"]))
    assert "sub/notes.txt" not in names
    assert "notes.txt" in names  # only under sub/
    assert "sub/keep.py" in names


def test_ignored_directories_are_pruned(tmp_path: Path) -> None:
    names = _names(tar_directory(_ignore_tree(tmp_path / "src"), ["build", "node_modules"]))
    assert not [n for n in names if n == "build" or n.startswith("build/")]
    assert not [n for n in names if n.startswith("node_modules")]
    # a name pattern matches at any depth
    assert "sub/build" not in names and "sub/build/y.py" not in names
    assert names == ["drop.pyc", "keep.py", "notes.txt", "sub", "sub/drop.pyc", "sub/keep.py",
                     "sub/notes.txt"]


def test_ignore_predicate_sees_relative_paths(tmp_path: Path) -> None:
    root = _ignore_tree(tmp_path / "src")
    seen: list[Path] = []

    def ignore(rel: Path) -> bool:
        seen.append(rel)
        return rel.name == "build" or rel.suffix == ".txt"

    names = _names(tar_directory(root, ignore))
    assert seen
    assert all(isinstance(p, Path) and not p.is_absolute() for p in seen)
    assert Path("sub/keep.py") in seen
    assert Path("build") in seen
    assert not [p for p in seen if p.parts[0] == "build" and len(p.parts) > 1]  # pruned
    assert not [n for n in names if n.endswith(".txt") or "build" in n]
    assert "sub/keep.py" in names and "node_modules/pkg/index.js" in names


@pytest.mark.parametrize("ignore", ["*.pyc", [1], ["ok", None], [b"*.pyc"]], ids=repr)
def test_bad_ignore_specs_raise(tmp_path: Path, ignore: Any) -> None:
    with pytest.raises(InvalidError):
        tar_directory(_ignore_tree(tmp_path / "src"), ignore)


# special files ----------------------------------------------------------------------------
def test_fifo_raises(tmp_path: Path) -> None:
    root = _tree(tmp_path / "src")
    os.mkfifo(root / "sub" / "pipe")
    with pytest.raises(InvalidError, match="pipe"):
        tar_directory(root)
    # unless it is ignored
    assert "sub/pipe" not in _names(tar_directory(root, ["pipe"]))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every directory")
def test_unreadable_directory_is_not_silently_empty(tmp_path: Path) -> None:
    root = tmp_path / "src"
    (root / "locked").mkdir(parents=True)
    (root / "locked" / "secret.txt").write_text("x")
    (root / "locked").chmod(0)
    try:
        with pytest.raises((OSError, InvalidError)):
            tar_directory(root)
    finally:
        (root / "locked").chmod(0o700)


# tar_file ---------------------------------------------------------------------------------
def test_tar_file_names_the_member(tmp_path: Path) -> None:
    src = tmp_path / "original.bin"
    payload = bytes(range(256)) * 3
    src.write_bytes(payload)
    src.chmod(0o640)
    data = tar_file(src, "renamed.dat")
    [member] = _members(data)
    assert member.name == "renamed.dat"
    assert member.isreg()
    assert member.mode == 0o640
    assert stat.S_IMODE(member.mode) == 0o640
    assert (member.uid, member.gid, member.mtime) == (0, 0, 0)
    assert (member.uname, member.gname) == ("", "")
    assert member.size == len(payload)
    assert _content(data, "renamed.dat") == payload
    os.utime(src, (1_234_567_890, 1_234_567_890))
    assert tar_file(src, "renamed.dat") == data
    assert tar_file(src, "other") != data


def test_tar_file_missing_raises(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        tar_file(tmp_path / "missing", "x")
