"""hutch.imagebuild.importer and layerunpack: OCI whiteouts to overlay ones, hostile layers."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from hutch.imagebuild.importer import ImportFailed, _adopt, plain_http
from hutch.imagebuild.layerunpack import unpack_layer
from hutch.imagebuild.layout import ImageStore

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


def _tar(entries: list[tuple[str, str, bytes | str]]) -> bytes:
    """(name, kind, data): kind is file, dir, symlink (data = target) or hardlink."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif kind in ("symlink", "hardlink"):
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = str(data)
                tar.addfile(info)
            else:
                raw = data if isinstance(data, bytes) else data.encode()
                info.size, info.mode = len(raw), 0o640
                tar.addfile(info, io.BytesIO(raw))
    return out.getvalue()


def _blob(tmp_path: Path, raw: bytes, media: str = GZIP) -> tuple[Path, str]:
    blob = tmp_path / "blob"
    if media == GZIP:
        blob.write_bytes(gzip.compress(raw))
    else:
        blob.write_bytes(subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True,
                                        check=True).stdout)
    return blob, "sha256:" + hashlib.sha256(raw).hexdigest()


def _unpack(tmp_path: Path, raw: bytes, media: str = GZIP) -> Path:
    blob, diff_id = _blob(tmp_path, raw, media)
    target = tmp_path / "layer"
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    unpack_layer(blob, media, diff_id, target, scratch)
    return target


def test_files_dirs_links_and_modes(tmp_path: Path) -> None:
    layer = _unpack(tmp_path, _tar([
        ("etc", "dir", b""), ("etc/conf", "file", "x=1\n"),
        ("etc/link", "symlink", "conf"), ("etc/hard", "hardlink", "etc/conf"),
    ]))
    assert (layer / "etc/conf").read_text() == "x=1\n"
    assert stat.S_IMODE((layer / "etc/conf").stat().st_mode) == 0o640
    assert os.readlink(layer / "etc/link") == "conf"
    assert (layer / "etc/hard").stat().st_ino == (layer / "etc/conf").stat().st_ino


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd is not installed")
def test_zstd_layers(tmp_path: Path) -> None:
    layer = _unpack(tmp_path, _tar([("a.txt", "file", "zstd\n")]), ZSTD)
    assert (layer / "a.txt").read_text() == "zstd\n"


def test_whiteouts_become_overlay_whiteouts(tmp_path: Path) -> None:
    raw = _tar([("usr", "dir", b""), ("usr/.wh.doc", "file", b""),
                ("opt", "dir", b""), ("opt/.wh..wh..opq", "file", b""),
                ("opt/new", "file", "n\n")])
    try:
        layer = _unpack(tmp_path, raw)
    except PermissionError:
        pytest.skip("creating 0:0 character devices needs root or a user namespace")
    except OSError as exc:  # user xattrs refused by this filesystem
        pytest.skip(f"cannot mark opaque directories here: {exc}")
    st = os.lstat(layer / "usr/doc")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert not (layer / "usr/.wh.doc").exists()
    assert os.getxattr(layer / "opt", "user.overlay.opaque") == b"y"
    assert sorted(os.listdir(layer / "opt")) == ["new"]


@pytest.mark.parametrize("entries", [
    [("../escape", "file", "x")],
    [("link", "symlink", "/tmp"), ("link/planted", "file", "x")],
    [("d", "dir", b""), ("d/up", "symlink", ".."), ("d/up/../../planted", "file", "x")],
    [("hard", "hardlink", "../../etc/passwd")],
])
def test_hostile_entries_are_refused(tmp_path: Path,
                                     entries: list[tuple[str, str, bytes | str]]) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(ImportFailed):
        _unpack(work, _tar(entries))
    assert not (work / "layer").exists()
    assert not list(outside.iterdir())
    assert not Path("/tmp/planted").exists()


def test_absolute_names_land_inside_the_layer(tmp_path: Path) -> None:
    """As GNU tar does, a leading / is dropped: the entry is the layer's, never the host's."""
    layer = _unpack(tmp_path, _tar([("/hutch-abs-entry", "file", "x")]))
    assert (layer / "hutch-abs-entry").read_text() == "x"
    assert not Path("/hutch-abs-entry").exists()


def test_content_must_match_the_diff_id(tmp_path: Path) -> None:
    blob, _ = _blob(tmp_path, _tar([("a", "file", "a\n")]))
    (tmp_path / "tmp").mkdir()
    with pytest.raises(ImportFailed, match="does not match its diff id"):
        unpack_layer(blob, GZIP, "sha256:" + "0" * 64, tmp_path / "layer", tmp_path / "tmp")
    assert not (tmp_path / "layer").exists()
    assert not list((tmp_path / "tmp").iterdir())


def test_unknown_media_type(tmp_path: Path) -> None:
    blob, diff_id = _blob(tmp_path, _tar([("a", "file", "a\n")]))
    with pytest.raises(ImportFailed, match="unsupported layer media type"):
        unpack_layer(blob, "application/x-weird", diff_id, tmp_path / "layer", tmp_path)


# unpack_layer and _adopt: hostile layers leave nothing behind -----------------------------------
@pytest.mark.parametrize("entries", [
    [("a", "file", "a"), (".wh...", "file", b"")],
    [("a", "dir", b""), ("a/.wh...", "file", b"")],
    [("x/.wh.", "file", b"")],
])
def test_whiteouts_naming_no_file_are_refused(tmp_path: Path,
                                              entries: list[tuple[str, str, bytes | str]]
                                              ) -> None:
    """``.wh...`` once removed everything beside the layer's scratch directory (other
    builds in progress): the scratch's neighbours stay, the layer is refused."""
    scratch = tmp_path / "tmp"
    (scratch / "bystander").mkdir(parents=True)
    (scratch / "bystander" / "sleep").write_text("another build's")
    blob, diff_id = _blob(tmp_path, _tar(entries))
    with pytest.raises(ImportFailed, match="whiteout"):
        unpack_layer(blob, GZIP, diff_id, tmp_path / "layer", scratch)
    assert os.listdir(scratch) == ["bystander"]
    assert (scratch / "bystander" / "sleep").read_text() == "another build's"
    assert not (tmp_path / "layer").exists()


def test_a_diff_id_that_is_not_a_digest_is_refused(tmp_path: Path) -> None:
    blob, _ = _blob(tmp_path, _tar([("a", "file", "a")]))
    (tmp_path / "tmp").mkdir()
    with pytest.raises(ImportFailed, match="not a sha256 digest"):
        unpack_layer(blob, GZIP, "sha256:../../x", tmp_path / "layer", tmp_path / "tmp")


def test_an_entry_larger_than_the_disk_is_refused_before_writing(tmp_path: Path) -> None:
    out = io.BytesIO()
    info = tarfile.TarInfo("huge")
    info.size = 1 << 50
    out.write(info.tobuf(tarfile.PAX_FORMAT) + b"\0" * 1024)
    blob, diff_id = _blob(tmp_path, out.getvalue())
    (tmp_path / "tmp").mkdir()
    with pytest.raises(ImportFailed, match="do not fit"):
        unpack_layer(blob, GZIP, diff_id, tmp_path / "layer", tmp_path / "tmp")
    assert not list((tmp_path / "tmp").iterdir())


def _layout(root: Path, layers: list[bytes], diff_ids: list[str] | None = None) -> Path:
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict[str, object]:
        (blobs / hashlib.sha256(data).hexdigest()).write_bytes(data)
        return {"digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}

    config = {"rootfs": {"type": "layers", "diff_ids": diff_ids or [
        "sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]}}
    manifest = {"schemaVersion": 2, "config": put(json.dumps(config).encode()),
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                            **put(layer)} for layer in layers]}
    index = {"manifests": [put(json.dumps(manifest).encode())]}
    (root / "index.json").write_text(json.dumps(index))
    return root


def test_adopt_renames_layers_only_when_every_one_is_complete(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "data")
    good = _tar([("usr", "dir", b""), ("usr/bin", "dir", b""), ("usr/bin/sleep", "file", "x")])
    bad = _tar([("ok", "file", "x"), ("../escape", "file", "x")])
    with pytest.raises(ImportFailed, match="climbs out"):
        _adopt(store, _layout(tmp_path / "layout", [good, bad]), "ref", lambda line: None)
    assert list(store.layers.iterdir()) == []
    assert list(store.tmp.iterdir()) == []
    assert list(store.blobs.iterdir()) == []
    assert store.lookup("ref") is None
    # the good layer alone imports
    _adopt(store, _layout(tmp_path / "alone", [good]), "ref", lambda line: None)
    [layer] = store.layers.iterdir()
    assert (layer / "usr" / "bin" / "sleep").read_text() == "x"
    assert store.lookup("ref") is not None


@pytest.mark.parametrize("diff_id", ["sha256:" + "../" * 12 + "home", "sha256:..", "x"])
def test_adopt_refuses_diff_ids_that_are_not_digests(tmp_path: Path, diff_id: str) -> None:
    store = ImageStore(tmp_path / "data")
    layout = _layout(tmp_path / "layout", [_tar([("a", "file", "a")])], diff_ids=[diff_id])
    with pytest.raises(ImportFailed, match="diff id"):
        _adopt(store, layout, "ref", lambda line: None)
    assert store.lookup("ref") is None and list(store.layers.iterdir()) == []


@pytest.mark.parametrize(("reference", "local"), [
    ("docker://127.0.0.1:5000/x:1", True),
    ("127.0.0.1/x", True),
    ("localhost:5000/a/b:1", True),
    ("docker://[::1]:5000/x", True),
    ("[::1]/x", True),
    ("docker.io/library/debian:12", False),
    ("127.0.0.1.example.com/x", False),
    ("localhost:5000", False),  # no registry host: Docker Hub's library/localhost
    ("debian:12", False),
    ("[::2]:5000/x", False),
])
def test_a_registry_on_loopback_is_reached_over_plain_http(reference: str, local: bool) -> None:
    assert plain_http(reference) is local
