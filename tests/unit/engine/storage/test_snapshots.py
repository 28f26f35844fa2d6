"""hutch.engine.storage.snapshots: a copied tree becomes an uncompressed layer (digest =
diff id) over its base image's layers, tagged as an ordinary image of the store."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hutch.engine.isolation.idslices import NOBODY, Slice
from hutch.engine.storage import snapshots
from hutch.imagebuild.layout import ImageStore


def _tree(store: ImageStore, content: bytes) -> Path:
    tree = snapshots.new_tree(store)
    (tree / "file").write_bytes(content)
    os.utime(tree / "file", (1000, 1000))  # (a tar keeps times: the same ones here)
    return tree


def test_the_id_map_takes_a_slice_back_to_the_image_ids() -> None:
    mapped = snapshots.id_map(Slice(200000, 65536))
    assert mapped(200000) == 0 and mapped(201000) == 1000
    assert mapped(200000 + 65536) == NOBODY  # the slice's nobody
    assert mapped(5) == 0  # the engine's own (a directory the runtime made)
    assert snapshots.id_map(None)(1234) == 1234


def test_a_tree_becomes_a_layer_and_an_image_over_its_base(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    base_layer = snapshots.commit_tree(store, _tree(store, b"base"))
    store.write_image("base:1", [base_layer], {"Env": ["A=1"], "WorkingDir": "/w"})
    tree = _tree(store, b"changed")
    desc, diff_id = snapshots.commit_tree(store, tree)
    assert not tree.exists()
    assert desc["mediaType"] == snapshots.MEDIA_LAYER_TAR and desc["digest"] == diff_id
    assert (store.layers / diff_id.split(":")[1] / "file").read_bytes() == b"changed"
    ref = snapshots.write_snapshot(store, sandbox_id="sb-x", base_ref="base:1",
                                   layer=(desc, diff_id), source="sb-x")
    assert ref.startswith("hutch/snapshot:sb-x-")
    image = store.resolve(ref)
    assert image.env == {"A": "1"} and image.workdir == "/w"
    assert [p.name for p in image.layer_dirs] == [base_layer[1].split(":")[1],
                                                  diff_id.split(":")[1]]
    _, config = store.image_parts(ref)
    assert config["config"]["Labels"][snapshots.SOURCE_LABEL] == "sb-x"


def test_the_same_content_twice_shares_one_layer(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    first = snapshots.commit_tree(store, _tree(store, b"same"))
    second = snapshots.commit_tree(store, _tree(store, b"same"))
    assert first == second
    assert list(store.tmp.iterdir()) == []


def test_a_directory_snapshot_has_no_base(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    layer = snapshots.commit_tree(store, _tree(store, b"dir"))
    ref = snapshots.write_snapshot(store, sandbox_id="sb-y", base_ref=None, layer=layer,
                                   source="sb-y:/proj")
    manifest = json.loads(store.blob_path(store.lookup(ref) or "").read_text())
    assert len(manifest["layers"]) == 1
