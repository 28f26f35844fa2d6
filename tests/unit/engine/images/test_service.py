"""hutch.engine.images.service: OCI paths named by a client are read without blocking the engine,
and an image whose layers cannot be made again is refused with the reason."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import threading
from pathlib import Path

import pytest
import trio

from hutch.engine.errors import ImageBuildFailed
from hutch.engine.images.service import ImageService, _fingerprint


def test_fingerprint_of_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "index.json").write_bytes(b"{}" * 100_000)
    assert _fingerprint(tmp_path / "index.json") == hashlib.sha256(b"{}" * 100_000).hexdigest()


def test_a_fifo_named_as_an_index_is_refused_at_once(tmp_path: Path) -> None:
    """Opening a FIFO for reading blocks until a writer comes: it must not."""
    os.mkfifo(tmp_path / "index.json")
    box: list[BaseException] = []

    def run() -> None:
        try:
            _fingerprint(tmp_path / "index.json")
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "reading a FIFO blocked"
    assert isinstance(box[0], OSError) and "not a regular file" in str(box[0])


def test_resolving_an_image_whose_layer_cannot_be_unpacked_is_a_clear_error(
        tmp_path: Path) -> None:
    images = ImageService(tmp_path / "data")
    rootfs = images.store.tmp / "rootfs"
    (rootfs / "usr" / "bin").mkdir(parents=True)
    (rootfs / "usr" / "bin" / "sleep").write_text("x")
    layer = images.store.commit_layer_dir(rootfs)
    images.store.write_image("img", [layer], {})
    shutil.rmtree(images.store.layers / layer[1].split(":", 1)[1])
    images.store.blob_path(layer[0]["digest"]).write_bytes(gzip.compress(b"\0" * 1024))
    with pytest.raises(ImageBuildFailed, match=r"'img' cannot be used.*diff id"):
        trio.run(images.resolve, "img")
    assert list(images.store.tmp.iterdir()) == []
