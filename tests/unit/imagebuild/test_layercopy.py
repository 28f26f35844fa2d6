"""hutch.imagebuild.layercopy: a tree a sandbox wrote, copied into a layer directory
without following links out, with FIFOs, sparse files, hard links, modes, times and
user xattrs kept, sockets left out, and limits on size, depth and time."""

from __future__ import annotations

import errno
import os
import socket
import stat
import time
from pathlib import Path

import pytest

from hutch.imagebuild import inroot, layercopy


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    root.mkdir()
    return root


def _copy(src: Path, dest: Path, *, limit: int | None = None, deadline: float | None = None,
          overlay: bool = False) -> int:
    dest.mkdir()
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        budget = layercopy.Budget(inroot.Space(fd), limit=limit, deadline=deadline)
        return layercopy.copy_tree(fd, dest, ids=lambda _: os.getuid() if os.getuid() else _,
                                   budget=budget, overlay=overlay)
    finally:
        os.close(fd)


def test_files_links_fifos_and_modes_are_copied(src: Path, tmp_path: Path) -> None:
    (src / "dir" / "deeper").mkdir(parents=True)
    (src / "dir" / "file").write_bytes(b"content")
    (src / "dir" / "file").chmod(0o640)
    (src / "dir").chmod(0o750)
    os.symlink("/etc/shadow", src / "abs")
    os.symlink("../../../outside", src / "dir" / "rel")
    os.mkfifo(src / "fifo")
    os.link(src / "dir" / "file", src / "hard")
    os.utime(src / "dir" / "file", ns=(1_000_000_000, 2_000_000_000))
    dest = tmp_path / "dest"
    assert _copy(src, dest) == 7
    assert (dest / "dir" / "file").read_bytes() == b"content"
    assert stat.S_IMODE((dest / "dir" / "file").stat().st_mode) == 0o640
    assert stat.S_IMODE((dest / "dir").stat().st_mode) == 0o750
    assert (dest / "dir" / "file").stat().st_mtime_ns == 2_000_000_000
    assert os.readlink(dest / "abs") == "/etc/shadow"  # a link stays a link
    assert os.readlink(dest / "dir" / "rel") == "../../../outside"
    assert stat.S_ISFIFO((dest / "fifo").lstat().st_mode)
    assert (dest / "hard").stat().st_ino == (dest / "dir" / "file").stat().st_ino


def test_sockets_are_left_out(src: Path, tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(src / "sock"))
        _copy(src, tmp_path / "dest")
    assert not (tmp_path / "dest" / "sock").exists()


def test_sparse_files_stay_sparse_but_count_whole(src: Path, tmp_path: Path) -> None:
    with open(src / "sparse", "wb") as f:
        f.truncate(64 << 20)
        f.seek(32 << 20)
        f.write(b"middle")
    assert _copy(src, tmp_path / "dest") == 64 << 20
    copied = tmp_path / "dest" / "sparse"
    assert copied.stat().st_size == 64 << 20
    assert copied.stat().st_blocks * 512 < 1 << 20
    with open(copied, "rb") as f:
        f.seek(32 << 20)
        assert f.read(6) == b"middle"


def test_the_limit_refuses_a_huge_sparse_file(src: Path, tmp_path: Path) -> None:
    with open(src / "huge", "wb") as f:
        f.truncate(1 << 40)
    with pytest.raises(layercopy.CopyRefused, match="disk limit"):
        _copy(src, tmp_path / "dest", limit=1 << 30)
    with pytest.raises(layercopy.CopyRefused, match="no room"):  # the free space, anyway
        _copy(src, tmp_path / "dest2")


def test_a_tree_too_deep_is_refused(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                    ) -> None:
    monkeypatch.setattr(layercopy, "MAX_DEPTH", 5)
    (src / "a" / "b" / "c" / "d" / "e" / "f" / "g").mkdir(parents=True)
    with pytest.raises(layercopy.CopyRefused, match="deep"):
        _copy(src, tmp_path / "dest")


def test_the_deadline_stops_the_copy(src: Path, tmp_path: Path) -> None:
    (src / "f").write_bytes(b"x")
    with pytest.raises(layercopy.CopyTimedOut):
        _copy(src, tmp_path / "dest", deadline=time.monotonic() - 1)


def test_user_xattrs_are_kept_and_overlay_ones_only_opaque(src: Path, tmp_path: Path) -> None:
    (src / "d").mkdir()
    (src / "f").write_bytes(b"x")
    try:
        os.setxattr(src / "f", "user.mine", b"1")
        os.setxattr(src / "f", "user.overlay.origin", b"junk")
        os.setxattr(src / "d", "user.overlay.opaque", b"y")
    except OSError:
        pytest.skip("this file system takes no user xattrs")
    _copy(src, tmp_path / "plain")
    assert os.listxattr(tmp_path / "plain" / "f") == ["user.mine"]
    assert os.listxattr(tmp_path / "plain" / "d") == []
    _copy(src, tmp_path / "upper", overlay=True)
    assert os.getxattr(tmp_path / "upper" / "d", "user.overlay.opaque") == b"y"


@pytest.mark.skipif(os.geteuid() != 0, reason="making a whiteout needs CAP_MKNOD")
def test_whiteouts_are_kept_only_from_an_upper_directory(src: Path, tmp_path: Path) -> None:
    os.mknod(src / "gone", stat.S_IFCHR | 0o000, 0)
    _copy(src, tmp_path / "upper", overlay=True)
    made = (tmp_path / "upper" / "gone").lstat()
    assert stat.S_ISCHR(made.st_mode) and made.st_rdev == 0
    _copy(src, tmp_path / "plain")
    assert not (tmp_path / "plain" / "gone").exists()


def test_a_mount_point_below_is_never_entered() -> None:
    """/proc is another mount below /: the copy's opens refuse to cross into it."""
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as caught:
            inroot.openat2(fd, "proc", os.O_RDONLY | os.O_DIRECTORY, layercopy._BENEATH)
        assert caught.value.errno == errno.EXDEV
    finally:
        os.close(fd)


def test_owners_go_through_the_id_map(src: Path, tmp_path: Path) -> None:
    (src / "f").write_bytes(b"x")
    seen: list[int] = []

    def ids(value: int) -> int:
        seen.append(value)
        return os.getuid()

    dest = tmp_path / "dest"
    dest.mkdir()
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        layercopy.copy_tree(fd, dest, ids=ids, budget=layercopy.Budget(inroot.Space(fd)))
    finally:
        os.close(fd)
    assert seen and set(seen) == {os.getuid(), os.getgid()}
