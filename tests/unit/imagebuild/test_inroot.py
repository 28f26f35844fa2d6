"""hutch.imagebuild.inroot: tar entries and paths that try to leave their root.

Each hostile tar is extracted for real into a root directory next to an ``outside``
directory and a ``victim`` file; the tests check both stay untouched, whatever the
outcome, and that what may be written lands inside the root.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch.imagebuild import inroot
from hutch.imagebuild.inroot import Extractor, Space, UnsafeEntry

Entry = tuple[str, str, bytes | str]


def make_tar(entries: list[Entry]) -> bytes:
    """(name, kind, data): file, dir, symlink/hardlink (data: target), chr, fifo."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            info.mode = 0o755 if kind == "dir" else 0o640
            info.uid, info.gid = os.getuid(), os.getgid()
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind in ("symlink", "hardlink"):
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = str(data)
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 1
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            else:
                raw = data if isinstance(data, bytes) else data.encode()
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
                continue
            tar.addfile(info)
    return out.getvalue()


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "victim").write_text("original")
    yield tmp_path / "root"
    assert list((tmp_path / "outside").iterdir()) == []
    assert (tmp_path / "victim").read_text() == "original"
    assert (tmp_path / "victim").stat().st_nlink == 1


def extract(root: Path, entries: list[Entry], *, follow: bool = False,
            whiteouts: bool = True, under: str = "/", space: Space | None = None) -> None:
    fd = inroot.open_root(root)
    try:
        ex = Extractor(fd, follow=follow, whiteouts=whiteouts, space=space)
        os.close(ex.make_dirs(under))
        with tarfile.open(fileobj=io.BytesIO(make_tar(entries))) as tar:
            ex.extract_all(tar, inroot.components(under))
    finally:
        os.close(fd)


# names ------------------------------------------------------------------------------------
def test_split_drops_slashes_and_dots_and_refuses_dotdot() -> None:
    assert inroot.split("/a//./b/") == ["a", "b"]
    assert inroot.split("./") == []
    for name in ("../x", "a/../../x", "a/.."):
        with pytest.raises(UnsafeEntry, match=r"'\.\.'"):
            inroot.split(name)


def test_components_keep_dotdot_for_the_kernel() -> None:
    assert inroot.components("/../a/./b//") == ["..", "a", "b"]
    assert inroot.components("//") == []
    with pytest.raises(UnsafeEntry):
        inroot.components("/a\0b")


def test_make_dirs_stops_dotdot_at_the_root(root: Path) -> None:
    fd = inroot.open_root(root)
    try:
        ex = Extractor(fd, follow=True, whiteouts=False)
        os.close(ex.make_dirs("/../../../x/../../y/z"))
    finally:
        os.close(fd)
    assert (root / "y" / "z").is_dir() and sorted(os.listdir(root)) == ["x", "y"]


# layers: nothing is followed -------------------------------------------------------------------
@pytest.mark.parametrize("entries", [
    [("../outside/x", "file", "x")],
    [("a/../../outside/x", "file", "x")],
    [("l", "symlink", "../outside"), ("l/x", "file", "x")],
    [("l", "symlink", "/"), ("l/x", "file", "x")],
    [("d", "dir", ""), ("d/up", "symlink", ".."), ("d/up/up/outside/x", "file", "x")],
    [("h", "hardlink", "../victim")],
    [("l", "symlink", ".."), ("h", "hardlink", "l/victim")],
    [(".wh...", "file", "")],
    [("a", "dir", ""), ("a/.wh...", "file", "")],
    [("a/.wh.", "file", "")],
    [("a/.wh..wh.x", "file", "")],
    [("d", "dir", ""), ("h", "hardlink", "d")],
])
def test_layer_entries_that_leave_are_refused(root: Path, entries: list[Entry]) -> None:
    with pytest.raises(UnsafeEntry):
        extract(root, entries)


def test_absolute_names_and_link_targets_stay_inside(root: Path) -> None:
    extract(root, [("/etc/x", "file", "x"), ("/etc/h", "hardlink", "/etc/x"),
                   ("/l", "symlink", "/etc/x")])
    assert (root / "etc" / "x").read_text() == "x"
    assert (root / "etc" / "h").stat().st_ino == (root / "etc" / "x").stat().st_ino
    assert os.readlink(root / "l") == "/etc/x"  # kept as data, for the sandbox to follow


def test_a_symlink_entry_is_replaced_not_written_through(root: Path) -> None:
    victim = root.parent / "victim"
    extract(root, [("f", "symlink", str(victim)), ("f", "file", "mine")])
    assert (root / "f").read_text() == "mine" and not (root / "f").is_symlink()


def test_a_symlink_then_a_directory_of_the_same_name_is_a_directory(root: Path) -> None:
    extract(root, [("l", "symlink", str(root.parent / "outside")), ("l", "dir", ""),
                   ("l/x", "file", "x")])
    assert (root / "l" / "x").read_text() == "x" and not (root / "l").is_symlink()


def test_devices_and_fifos_are_not_made(root: Path) -> None:
    extract(root, [("mem", "chr", ""), ("pipe", "fifo", ""), ("ok", "file", "ok")])
    assert sorted(os.listdir(root)) == ["ok"]


def test_whiteouts_become_overlay_whiteouts(root: Path) -> None:
    try:
        extract(root, [("a", "dir", ""), ("a/old", "file", "x"), ("a/.wh.old", "file", "")])
    except UnsafeEntry as exc:
        if "not permitted" in str(exc):
            pytest.skip("making a whiteout device needs privileges")
        raise
    st = os.lstat(root / "a" / "old")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def test_contexts_keep_whiteout_names_as_files(root: Path) -> None:
    extract(root, [(".wh.x", "file", "x"), (".wh...", "file", "y")], whiteouts=False)
    assert (root / ".wh.x").read_text() == "x" and (root / ".wh...").read_text() == "y"


def test_modes_and_content(root: Path) -> None:
    extract(root, [("d", "dir", ""), ("d/f", "file", b"\x00data")])
    assert (root / "d" / "f").read_bytes() == b"\x00data"
    assert stat.S_IMODE((root / "d" / "f").stat().st_mode) == 0o640
    assert stat.S_IMODE((root / "d").stat().st_mode) == 0o755


# space --------------------------------------------------------------------------------------
def test_a_file_larger_than_the_free_space_is_refused_before_writing(root: Path) -> None:
    fd = os.open(root, os.O_RDONLY)
    try:
        st = os.fstatvfs(fd)
        everything = Space(fd, share=0.0, minimum=st.f_bavail * st.f_frsize)
        with pytest.raises(UnsafeEntry, match="do not fit"):
            extract(root, [("big", "file", "x" * 10)], space=everything)
    finally:
        os.close(fd)
    assert not (root / "big").exists()


def test_a_header_promising_more_than_the_data_fails(root: Path) -> None:
    raw = make_tar([("f", "file", "x" * 6000)])[:512 + 3000]  # the archive ends mid-file
    fd = inroot.open_root(root)
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r|") as tar, \
                pytest.raises(tarfile.ReadError):
            Extractor(fd, follow=False, whiteouts=True).extract_all(tar)
    finally:
        os.close(fd)


# contexts into an image: symlinks followed, in-root -------------------------------------------
def test_follow_resolves_absolute_symlinks_inside_the_root(root: Path) -> None:
    outside = root.parent / "outside"
    (root / "home" / "me").mkdir(parents=True)
    os.symlink(str(outside), root / "abs")           # absolute: the host's path
    os.symlink("../../../../../../..", root / "up")  # climbs: stops at the root
    extract(root, [("x", "file", "1")], follow=True, whiteouts=False, under="/abs/deep")
    extract(root, [("y", "file", "2")], follow=True, whiteouts=False,
                under="/../../up/home/me")
    assert (root / str(outside).lstrip("/") / "deep" / "x").read_text() == "1"
    assert (root / "home" / "me" / "y").read_text() == "2"


def test_follow_context_symlink_then_entry_stays_inside(root: Path) -> None:
    (root / "srv").mkdir()
    extract(root, [("l", "symlink", "/srv"), ("l/x", "file", "x"),
                   ("h", "hardlink", "l/x")], follow=True, whiteouts=False, under="/app")
    assert (root / "srv" / "x").read_text() == "x"
    assert (root / "app" / "h").stat().st_ino == (root / "srv" / "x").stat().st_ino


def test_follow_keeps_a_directory_symlink_of_the_image(root: Path) -> None:
    (root / "usr" / "lib").mkdir(parents=True)
    os.symlink("usr/lib", root / "lib")
    extract(root, [("lib", "dir", ""), ("lib/mod", "file", "m")], follow=True,
            whiteouts=False)
    assert (root / "lib").is_symlink() and (root / "usr" / "lib" / "mod").read_text() == "m"


def test_follow_makes_the_target_of_a_dangling_symlink_inside(root: Path) -> None:
    outside = root.parent / "outside"
    os.symlink(str(outside / "new"), root / "dangling")
    os.symlink("sub/../rel", root / "relative")
    (root / "sub").mkdir()
    extract(root, [("x", "file", "1")], follow=True, whiteouts=False, under="/dangling/d")
    extract(root, [("y", "file", "2")], follow=True, whiteouts=False, under="/relative")
    assert (root / str(outside).lstrip("/") / "new" / "d" / "x").read_text() == "1"
    assert (root / "rel" / "y").read_text() == "2"


def test_follow_refuses_a_symlink_loop_and_a_file_on_the_way(root: Path) -> None:
    os.symlink("loop", root / "loop")
    (root / "file").write_text("f")
    for under in ("/loop/x", "/file/x"):
        with pytest.raises(UnsafeEntry):
            extract(root, [("x", "file", "x")], follow=True, whiteouts=False, under=under)
