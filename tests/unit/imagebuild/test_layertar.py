"""hutch.imagebuild.layertar: an overlay upper directory as an OCI layer tar, and its commit.

Whiteouts (0:0 character devices) and opaque directories (``user.overlay.opaque=y``) are made
for real where the kernel and filesystem allow it (a root CI run, or a kernel that lets users
create whiteouts); elsewhere the tests that need them are skipped with the reason.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import socket
import stat
import tarfile
from pathlib import Path

import pytest

from hutch.imagebuild.layertar import OPAQUE_MARKER, write_layer_tar
from hutch.imagebuild.layout import MEDIA_LAYER_GZIP, ImageStore

FIXED_MTIME = 1_700_000_000
CONTENT = b"hello layer\n"
BINARY = bytes(range(256)) * 40


def _tar_bytes(upper: Path) -> bytes:
    out = io.BytesIO()
    write_layer_tar(upper, out)
    return out.getvalue()


def _members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


def _by_name(data: bytes) -> dict[str, tarfile.TarInfo]:
    return {m.name: m for m in _members(data)}


def _content(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        f = tar.extractfile(name)
        assert f is not None, name
        return f.read()


def _fix_times(root: Path) -> None:
    """The same mtime everywhere (children before parents), so equal trees give equal tars."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), (FIXED_MTIME, FIXED_MTIME),
                     follow_symlinks=False)
    os.utime(root, (FIXED_MTIME, FIXED_MTIME))


def _whiteout(path: Path) -> None:
    """An overlayfs whiteout at ``path``, or skip the test where it cannot be made."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))
    except PermissionError:
        pytest.skip("creating a 0:0 character device (an overlay whiteout) needs privileges")


def _opaque(path: Path, value: bytes = b"y") -> None:
    """Mark ``path`` as an opaque overlay directory, or skip where user xattrs are refused."""
    try:
        os.setxattr(path, "user.overlay.opaque", value)
    except OSError as e:
        pytest.skip(f"the filesystem refuses user xattrs: {e}")


def _plain_tree(root: Path) -> Path:
    root.mkdir()
    (root / "a.txt").write_bytes(CONTENT)
    (root / "a.txt").chmod(0o640)
    (root / "bin").mkdir()
    (root / "bin").chmod(0o750)
    (root / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "bin" / "alias").symlink_to("tool")
    (root / "data.bin").write_bytes(BINARY)
    (root / "data.bin").chmod(0o600)
    (root / "empty").mkdir()
    (root / "hard1").write_bytes(b"linked")
    os.link(root / "hard1", root / "hard2")
    return root


# plain files ------------------------------------------------------------------------------
def test_regular_files_keep_content_and_mode(tmp_path: Path) -> None:
    data = _tar_bytes(_plain_tree(tmp_path / "upper"))
    members = _by_name(data)
    assert members["a.txt"].isreg()
    assert members["a.txt"].mode == 0o640
    assert members["a.txt"].size == len(CONTENT)
    assert _content(data, "a.txt") == CONTENT
    assert members["data.bin"].mode == 0o600
    assert _content(data, "data.bin") == BINARY
    assert members["bin/tool"].mode == 0o755
    assert _content(data, "bin/tool") == b"#!/bin/sh\necho tool\n"


def test_directories_are_entries(tmp_path: Path) -> None:
    members = _by_name(_tar_bytes(_plain_tree(tmp_path / "upper")))
    assert members["bin"].isdir()
    assert members["bin"].mode == 0o750
    assert members["empty"].isdir()
    # the upper directory itself is not an entry, and names are relative
    assert all(not n.startswith(("/", "./")) and n not in ("", ".") for n in members)


def test_symlinks_stay_links(tmp_path: Path) -> None:
    upper = _plain_tree(tmp_path / "upper")
    (upper / "dangling").symlink_to("/nowhere/at/all")
    (upper / "dirlink").symlink_to("bin")
    members = _by_name(_tar_bytes(upper))
    assert members["bin/alias"].issym()
    assert members["bin/alias"].linkname == "tool"
    assert members["dangling"].issym()
    assert members["dangling"].linkname == "/nowhere/at/all"
    # a link to a directory is not followed
    assert members["dirlink"].issym()
    assert not [n for n in members if n.startswith("dirlink/")]


def test_hard_links_become_link_entries(tmp_path: Path) -> None:
    upper = _plain_tree(tmp_path / "upper")
    (upper / "sub").mkdir()
    os.link(upper / "hard1", upper / "sub" / "hard3")
    data = _tar_bytes(upper)
    members = _by_name(data)
    assert members["hard1"].isreg()
    assert _content(data, "hard1") == b"linked"
    for second in ("hard2", "sub/hard3"):
        assert members[second].islnk(), second
        assert members[second].linkname == "hard1"
        assert members[second].size == 0


def test_sorted_parents_first(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    # made out of order on purpose
    for name in ("zeta", "B", "a.b", "b"):
        (upper / name).write_text(name)
    (upper / "a").mkdir()
    (upper / "a" / "y").write_text("y")
    (upper / "a" / "x").mkdir()
    (upper / "a" / "x" / "deep").write_text("deep")
    names = [m.name for m in _members(_tar_bytes(upper))]
    assert names == ["B", "a", "a/x", "a/x/deep", "a/y", "a.b", "b", "zeta"]


def test_same_tree_gives_same_bytes(tmp_path: Path) -> None:
    upper = _plain_tree(tmp_path / "upper")
    assert _tar_bytes(upper) == _tar_bytes(upper)


def test_equal_trees_give_equal_bytes(tmp_path: Path) -> None:
    one = _plain_tree(tmp_path / "one")
    two = _plain_tree(tmp_path / "two")
    _fix_times(one)
    _fix_times(two)
    first = _tar_bytes(one)
    assert first == _tar_bytes(two)
    # and the bytes do depend on the contents
    (two / "a.txt").write_bytes(b"changed")
    _fix_times(two)
    assert first != _tar_bytes(two)


def test_numeric_owners_without_names(tmp_path: Path) -> None:
    upper = _plain_tree(tmp_path / "upper")
    chowned = os.geteuid() == 0
    if chowned:
        os.chown(upper / "data.bin", 1234, 5678)
    members = _members(_tar_bytes(upper))
    assert members
    for m in members:
        assert (m.uname, m.gname) == ("", ""), m.name
        if not (chowned and m.name == "data.bin"):
            assert (m.uid, m.gid) == (os.geteuid(), os.getegid()), m.name
    if chowned:
        data_bin = next(m for m in members if m.name == "data.bin")
        assert (data_bin.uid, data_bin.gid) == (1234, 5678)


# overlay markers --------------------------------------------------------------------------
def test_whiteouts_become_wh_files(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "dir").mkdir()
    (upper / "dir" / "kept").write_text("kept")
    _whiteout(upper / "gone")
    _whiteout(upper / "dir" / "removed")
    data = _tar_bytes(upper)
    members = _members(data)
    names = [m.name for m in members]
    assert names == ["dir", "dir/kept", "dir/.wh.removed", ".wh.gone"]
    for m in members:
        assert not m.ischr(), m.name
        if m.name.rsplit("/", 1)[-1].startswith(".wh."):
            assert m.isreg(), m.name
            assert m.size == 0
            assert _content(data, m.name) == b""


def test_other_character_devices_are_not_whiteouts(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    try:
        os.mknod(upper / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a character device needs CAP_MKNOD")
    [member] = _members(_tar_bytes(upper))
    assert member.name == "null"
    assert member.ischr()
    assert (member.devmajor, member.devminor) == (1, 3)


def test_opaque_directory_gets_marker_after_it(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "before").write_text("b")
    (upper / "opq").mkdir()
    (upper / "opq" / "a").write_text("a")
    (upper / "opq" / "sub").mkdir()
    (upper / "plain").mkdir()
    (upper / "plain" / "f").write_text("f")
    _opaque(upper / "opq")
    data = _tar_bytes(upper)
    members = _members(data)
    names = [m.name for m in members]
    assert names == ["before", "opq", f"opq/{OPAQUE_MARKER}", "opq/a", "opq/sub", "plain",
                     "plain/f"]
    marker = members[names.index(f"opq/{OPAQUE_MARKER}")]
    assert marker.isreg()
    assert marker.size == 0
    # only the marked directory is opaque
    assert [n for n in names if n.endswith(OPAQUE_MARKER)] == [f"opq/{OPAQUE_MARKER}"]


def test_opaque_needs_value_y(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "notopq").mkdir()
    # "x" marks a directory holding xwhiteouts, not an opaque one
    _opaque(upper / "notopq", b"x")
    names = [m.name for m in _members(_tar_bytes(upper))]
    assert names == ["notopq"]


def test_socket_in_upper_dir_is_left_out(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "kept").write_text("kept")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(upper / "agent.sock"))
        names = [m.name for m in _members(_tar_bytes(upper))]
    finally:
        sock.close()
    assert names == ["kept"]


# ImageStore.commit_layer_dir --------------------------------------------------------------
def _overlay_tree(root: Path) -> Path:
    """A plain tree plus a whiteout and an opaque directory (skipping where impossible)."""
    _plain_tree(root)
    (root / "opq").mkdir()
    (root / "opq" / "new").write_text("new")
    _whiteout(root / "gone")
    _opaque(root / "opq")
    _fix_times(root)
    return root


def _hex(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    assert algo == "sha256"
    assert len(hexpart) == 64
    return hexpart


def test_commit_layer_dir_of_overlay_upper(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "data")
    upper = _overlay_tree(store.tmp / "upper")
    expected_tar = _tar_bytes(upper)

    desc, diff_id = store.commit_layer_dir(upper)

    assert diff_id == "sha256:" + hashlib.sha256(expected_tar).hexdigest()
    assert desc["mediaType"] == MEDIA_LAYER_GZIP
    blob_path = store.blobs / _hex(desc["digest"])
    blob = blob_path.read_bytes()
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == desc["digest"]
    assert desc["size"] == len(blob)
    assert gzip.decompress(blob) == expected_tar
    names = [m.name for m in _members(expected_tar)]
    assert ".wh.gone" in names
    assert names[names.index("opq") + 1] == f"opq/{OPAQUE_MARKER}"

    # the directory itself is moved into place, overlay markers and all
    target = store.layers / _hex(diff_id)
    assert not upper.exists()
    assert (target / "a.txt").read_bytes() == CONTENT
    assert os.readlink(target / "bin" / "alias") == "tool"
    st = os.lstat(target / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(target / "opq", "user.overlay.opaque") == b"y"
    # no temporary files are left behind
    assert list(store.tmp.iterdir()) == []


def test_commit_identical_second_tree_is_shared(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "data")
    first = store.commit_layer_dir(_overlay_tree(store.tmp / "one"))
    second_dir = _overlay_tree(store.tmp / "two")
    second = store.commit_layer_dir(second_dir)
    assert second == first
    desc, diff_id = first
    assert not second_dir.exists()
    assert [p.name for p in store.layers.iterdir()] == [_hex(diff_id)]
    assert [p.name for p in store.blobs.iterdir()] == [_hex(desc["digest"])]
    assert (store.layers / _hex(diff_id) / "a.txt").read_bytes() == CONTENT
    assert list(store.tmp.iterdir()) == []


def test_commit_different_trees_differ(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "data")
    one = _plain_tree(store.tmp / "one")
    two = _plain_tree(store.tmp / "two")
    (two / "a.txt").write_bytes(b"other")
    _fix_times(one)
    _fix_times(two)
    desc1, diff1 = store.commit_layer_dir(one)
    desc2, diff2 = store.commit_layer_dir(two)
    assert diff1 != diff2
    assert desc1["digest"] != desc2["digest"]
    assert sorted(p.name for p in store.layers.iterdir()) == sorted([_hex(diff1), _hex(diff2)])
