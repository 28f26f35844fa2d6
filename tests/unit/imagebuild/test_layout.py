"""hutch.imagebuild.layout.ImageStore: a real OCI image layout plus shared unpacked layers."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jsonschema.protocols import Validator

from hutch.imagebuild import layout
from hutch.imagebuild.layout import ImageNotFound, ImageStore

REF = "hutch/test-image:v1"
FIXED_MTIME = 1_700_000_000


def _make_tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "greeting").write_text("hello\n")
    (root / "bin").mkdir()
    tool = root / "bin" / "tool"
    tool.write_text("#!/bin/sh\necho tool\n")
    tool.chmod(0o755)
    (root / "bin" / "alias").symlink_to("tool")
    (root / "var" / "empty").mkdir(parents=True)
    (root / "data.bin").write_bytes(bytes(range(256)) * 64)
    # fixed times (children before parents), so identical trees give identical tars
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), (FIXED_MTIME, FIXED_MTIME),
                     follow_symlinks=False)
    os.utime(root, (FIXED_MTIME, FIXED_MTIME))
    return root


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _check_tree(d: Path) -> None:
    assert (d / "etc" / "greeting").read_text() == "hello\n"
    assert (d / "bin" / "alias").is_symlink()
    assert os.readlink(d / "bin" / "alias") == "tool"
    assert (d / "bin" / "alias").read_text() == "#!/bin/sh\necho tool\n"
    assert os.access(d / "bin" / "tool", os.X_OK)
    assert (d / "var" / "empty").is_dir()
    assert list((d / "var" / "empty").iterdir()) == []
    assert (d / "data.bin").read_bytes() == bytes(range(256)) * 64


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "data")


@pytest.fixture
def image(store: ImageStore, tmp_path: Path) -> tuple[dict[str, Any], str, str]:
    """One committed layer written as image REF: (descriptor, diff_id, manifest digest)."""
    desc, diff_id = store.commit_layer_dir(_make_tree(tmp_path / "data" / "tmp" / "rootfs"))
    digest = store.write_image(REF, [(desc, diff_id)], {
        "Env": ["PATH=/usr/bin:/bin", "GREETING=a=b"],
        "Cmd": ["/bin/tool", "--flag"],
        "WorkingDir": "/srv",
    })
    return desc, diff_id, digest


def test_new_store_is_an_empty_layout(store: ImageStore, image_validator: Callable[[str],
                                                                                 Validator]
                                      ) -> None:
    layout_doc = json.loads((store.root / "oci-layout").read_text())
    assert layout_doc == {"imageLayoutVersion": "1.0.0"}
    image_validator("image-layout-schema.json").validate(layout_doc)
    index = json.loads((store.root / "index.json").read_text())
    image_validator("image-index-schema.json").validate(index)
    assert index["manifests"] == []
    assert store.refs() == {}
    # reopening an existing store keeps its index
    store.tag("x", _sha256(b"x"), 1)
    assert ImageStore(store.root.parent).lookup("x") == _sha256(b"x")


def test_commit_layer_dir(store: ImageStore, tmp_path: Path) -> None:
    src = _make_tree(tmp_path / "src")
    desc, diff_id = store.commit_layer_dir(src)

    assert desc["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    blob = store.blob_path(desc["digest"]).read_bytes()
    assert blob[:2] == b"\x1f\x8b"  # gzip
    assert _sha256(blob) == desc["digest"]
    assert desc["size"] == len(blob)

    tar_bytes = gzip.decompress(blob)
    assert _sha256(tar_bytes) == diff_id
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tf:
        members = {m.name.removeprefix("./").rstrip("/"): m for m in tf.getmembers()}
    assert members["etc/greeting"].isfile()
    assert members["bin/alias"].issym() and members["bin/alias"].linkname == "tool"
    assert members["var/empty"].isdir()
    assert members["bin/tool"].mode & 0o111

    target = store.layers / diff_id.split(":", 1)[1]
    assert target.is_dir()
    _check_tree(target)
    assert not src.exists()  # moved into place, not copied


def test_identical_trees_share_one_layer(store: ImageStore, tmp_path: Path) -> None:
    desc1, diff1 = store.commit_layer_dir(_make_tree(tmp_path / "one"))
    desc2, diff2 = store.commit_layer_dir(_make_tree(tmp_path / "two"))
    assert diff1 == diff2
    assert desc1 == desc2
    assert not (tmp_path / "two").exists()
    assert [p.name for p in store.layers.iterdir()] == [diff1.split(":", 1)[1]]
    _check_tree(store.layers / diff1.split(":", 1)[1])


def test_write_image_and_resolve(store: ImageStore,
                                 image: tuple[dict[str, Any], str, str]) -> None:
    desc, diff_id, digest = image
    assert store.lookup(REF) == digest
    assert store.lookup(digest) == digest  # by digest too
    assert store.refs() == {REF: digest}

    resolved = store.resolve(REF)
    assert resolved.ref == REF
    assert resolved.digest == digest
    assert resolved.env == {"PATH": "/usr/bin:/bin", "GREETING": "a=b"}
    assert resolved.cmd == ["/bin/tool", "--flag"]
    assert resolved.workdir == "/srv"
    assert resolved.layer_dirs == [store.layers / diff_id.split(":", 1)[1]]
    _check_tree(resolved.layer_dirs[0])

    manifest_bytes = store.blob_path(digest).read_bytes()
    assert _sha256(manifest_bytes) == digest
    manifest = json.loads(manifest_bytes)
    assert manifest["layers"] == [desc]
    config_bytes = store.blob_path(manifest["config"]["digest"]).read_bytes()
    assert _sha256(config_bytes) == manifest["config"]["digest"]
    assert manifest["config"]["size"] == len(config_bytes)
    config = json.loads(config_bytes)
    assert config["rootfs"] == {"type": "layers", "diff_ids": [diff_id]}
    assert config["os"] == "linux"
    index = json.loads((store.root / "index.json").read_text())
    [entry] = index["manifests"]
    assert entry["size"] == len(manifest_bytes)


def test_resolve_defaults_without_config(store: ImageStore, tmp_path: Path) -> None:
    layer = store.commit_layer_dir(_make_tree(tmp_path / "src"))
    store.write_image("bare", [layer], {})
    img = store.resolve("bare")
    assert (img.env, img.cmd, img.workdir) == ({}, [], "/")


def test_retag_replaces_entry(store: ImageStore, tmp_path: Path,
                              image: tuple[dict[str, Any], str, str]) -> None:
    _, _, first = image
    assert store.lookup(REF) == first and store.lookup(first) == first  # (now cached)
    layer = store.commit_layer_dir(_make_tree(tmp_path / "other"))
    second = store.write_image(REF, [layer], {"Cmd": ["other"]})
    assert second != first
    assert store.lookup(REF) == second and store.lookup(first) is None  # the index changed
    index = json.loads((store.root / "index.json").read_text())
    assert len(index["manifests"]) == 1
    assert store.resolve(REF).cmd == ["other"]


def test_documents_validate_against_image_spec(
    store: ImageStore, image: tuple[dict[str, Any], str, str],
    image_validator: Callable[[str], Validator],
) -> None:
    _, _, digest = image
    manifest = store.read_json(digest)
    config = store.read_json(manifest["config"]["digest"])
    index = json.loads((store.root / "index.json").read_text())
    image_validator("image-manifest-schema.json").validate(manifest)
    image_validator("image-index-schema.json").validate(index)
    image_validator("config-schema.json").validate(config)
    image_validator("image-layout-schema.json").validate(
        json.loads((store.root / "oci-layout").read_text()))
    assert manifest["mediaType"] == layout.MEDIA_MANIFEST
    assert manifest["config"]["mediaType"] == layout.MEDIA_CONFIG
    assert index["manifests"][0]["annotations"] == {
        "org.opencontainers.image.ref.name": REF}

    # The validators really check, through the $ref'd descriptor definitions too.
    bad = json.loads(json.dumps(manifest))
    bad["layers"][0]["digest"] = "not-a-digest"
    assert list(image_validator("image-manifest-schema.json").iter_errors(bad))
    bad_index = {"schemaVersion": 2, "manifests": [{"mediaType": layout.MEDIA_MANIFEST,
                                                    "digest": digest}]}  # no size
    assert list(image_validator("image-index-schema.json").iter_errors(bad_index))
    bad_config = {k: v for k, v in config.items() if k != "rootfs"}
    assert list(image_validator("config-schema.json").iter_errors(bad_config))


def test_ensure_unpacked_recreates_deleted_layer(
    store: ImageStore, image: tuple[dict[str, Any], str, str]
) -> None:
    desc, diff_id, _ = image
    target = store.layers / diff_id.split(":", 1)[1]
    shutil.rmtree(target)
    assert store.ensure_unpacked(desc, diff_id) == target
    _check_tree(target)
    # and via resolve
    shutil.rmtree(target)
    [d] = store.resolve(REF).layer_dirs
    assert d == target
    _check_tree(d)
    # no leftovers of the unpack in tmp
    assert not [p for p in store.tmp.iterdir() if p.name.startswith("unpack-")]


def test_ensure_unpacked_keeps_existing_dir(
    store: ImageStore, image: tuple[dict[str, Any], str, str]
) -> None:
    desc, diff_id, _ = image
    target = store.layers / diff_id.split(":", 1)[1]
    (target / "marker").write_text("kept")
    assert store.ensure_unpacked(desc, diff_id) == target
    assert (target / "marker").read_text() == "kept"


def test_unknown_ref(store: ImageStore, image: tuple[dict[str, Any], str, str]) -> None:
    assert store.lookup("nope:latest") is None
    with pytest.raises(ImageNotFound):
        store.resolve("nope:latest")
    with pytest.raises(LookupError):
        store.resolve("sha256:" + "0" * 64)


def test_skopeo_reads_layout(store: ImageStore, image: tuple[dict[str, Any], str, str]
                             ) -> None:
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        pytest.skip("skopeo is not installed")
    desc, diff_id, digest = image
    proc = subprocess.run(
        [skopeo, "inspect", f"oci:{store.root}:{REF}"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["Digest"] == digest
    assert info["Layers"] == [desc["digest"]]
    assert info["Os"] == "linux"
    assert "GREETING=a=b" in info["Env"]
    raw = subprocess.run(
        [skopeo, "inspect", "--config", f"oci:{store.root}:{REF}"],
        capture_output=True, text=True, timeout=60,
    )
    assert raw.returncode == 0, raw.stderr
    assert json.loads(raw.stdout)["rootfs"]["diff_ids"] == [diff_id]


@pytest.mark.parametrize("digest", ["sha256:../../home", "sha256:" + "A" * 64, "md5:" + "0" * 64,
                                    "sha256:" + "0" * 63 + "/", "sha256:" + "0" * 64 + "/..",
                                    "sha256"])
def test_digests_that_are_not_sha256_never_become_paths(store: ImageStore,
                                                        digest: str) -> None:
    with pytest.raises(ValueError, match="not a sha256 digest"):
        store.blob_path(digest)
    with pytest.raises(ValueError, match="not a sha256 digest"):
        store.ensure_unpacked({"digest": "sha256:" + "0" * 64, "mediaType": "x"}, digest)


def test_a_layer_that_fails_to_unpack_again_leaves_nothing(
    store: ImageStore, image: tuple[dict[str, Any], str, str]
) -> None:
    """A blob that no longer matches its diff id (a damaged store): resolve fails, and
    neither a half-unpacked layer nor scratch is left for a later sandbox to use."""
    desc, diff_id, _ = image
    target = store.layers / diff_id.split(":", 1)[1]
    shutil.rmtree(target)
    store.blob_path(desc["digest"]).write_bytes(gzip.compress(b"\0" * 1024))
    with pytest.raises(RuntimeError, match="does not match its diff id"):
        store.resolve(REF)
    assert not target.exists()
    assert list(store.tmp.iterdir()) == []


def test_expire_forgets_only_old_refs_of_the_prefix(store: ImageStore, tmp_path: Path) -> None:
    layer = store.commit_layer_dir(_make_tree(tmp_path / "src"))
    for ref in ("hutch/step:old", "hutch/step:fresh", "hutch/named/main/keep:latest"):
        store.write_image(ref, [layer], {"Env": [f"REF={ref}"]})  # (a manifest each)
    now = time.time()
    for ref in ("hutch/step:old", "hutch/step:fresh", "hutch/named/main/keep:latest"):
        digest = store.lookup(ref)
        assert digest is not None
        os.utime(store.blob_path(digest), (now - 3 * 86400, now - 3 * 86400))
    store.touch("hutch/step:fresh")  # a cache hit, now
    store.touch("hutch/step:unknown")  # (nothing to note)
    assert store.expire("hutch/step:", 86400) == ["hutch/step:old"]
    assert set(store.refs()) == {"hutch/step:fresh", "hutch/named/main/keep:latest"}
    assert store.expire("hutch/step:", 86400) == []
    assert store.expire("hutch/step:", 0, now=now + 1) == ["hutch/step:fresh"]
    removed = store.prune(set())
    assert removed["layers"] == 0  # the named image still needs the layer


def test_expire_keeps_the_most_recently_used_within_a_budget(store: ImageStore,
                                                             tmp_path: Path) -> None:
    now = time.time()
    sizes = {}
    for age, name in enumerate(("newest", "middle", "oldest")):
        tree = _make_tree(tmp_path / name)
        (tree / name).write_text(name * 1000)  # (a layer of its own)
        layer = store.commit_layer_dir(tree)
        ref = f"hutch/step:{name}"
        store.write_image(ref, [layer], {})
        digest = store.lookup(ref)
        assert digest is not None
        os.utime(store.blob_path(digest), (now - age * 60, now - age * 60))
        sizes[name] = layer[0]["size"]
    budget = sizes["newest"] + sizes["middle"]
    assert store.expire("hutch/step:", keep_bytes=budget) == ["hutch/step:oldest"]
    assert store.expire("hutch/step:", keep_bytes=budget) == []
    assert store.expire("hutch/step:", keep_bytes=0) == ["hutch/step:newest",
                                                         "hutch/step:middle"]
