"""Snapshots as images in the store: a copied tree becomes one more layer over its base
image's layers, tagged like any image (``hutch image ls``, export, push, ``from_id``).

Why the layer is an *uncompressed* tar: a snapshot is taken while a program waits (an
agent checkpointing before each step), and gzip was the slowest part: on the 2-core CI
machine, 100 MiB of fresh files took 2.4 s to gzip at level 1 against 0.35-0.5 s to tar
and hash (OCI allows ``application/vnd.oci.image.layer.v1.tar``; its digest is its diff id,
and ``skopeo copy`` pushes it as it is).  The copy itself (:mod:`hutch.imagebuild.layercopy`)
*is* the unpacked layer directory: it is renamed into ``layers/`` once the tar of it has
given its diff id, so a sandbox created from the snapshot starts like one from any
cached image, without unpacking anything.

The layer directory keeps the tree's ``user.*`` extended attributes; the tar keeps what
OCI layers carry (owners, modes, times, links, whiteouts), as for build steps.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from hutch.engine.isolation import idslices
from hutch.engine.kernel import trees
from hutch.imagebuild.layertar import write_layer_tar
from hutch.imagebuild.layout import ImageStore

MEDIA_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
#: The repository part of every snapshot's reference (``hutch/snapshot:<sandbox>-<n>``).
SNAPSHOT_REPO = "hutch/snapshot"
#: The label that says which sandbox (and which directory) a snapshot was taken of.
SOURCE_LABEL = "dev.hutch.snapshot-of"


def id_map(piece: idslices.Slice | None) -> Callable[[int], int]:
    """Engine ids -> the image's ids, for files a sandbox with ids ``piece`` wrote: its id
    ``n`` is engine id ``base + n``, its nobody the one after; ids outside the slice are
    the engine's own (a directory the runtime made) and belong to root."""
    if piece is None:
        return lambda value: value
    base, size = piece.base, piece.size

    def mapped(value: int) -> int:
        if base <= value < base + size:
            return value - base
        if value == base + size:
            return idslices.NOBODY
        return 0

    return mapped


def new_tree(store: ImageStore) -> Path:
    """An empty directory for a copy, on the file system of the store's layers."""
    return Path(tempfile.mkdtemp(dir=store.tmp, prefix="snapshot-"))


def discard(tree: Path) -> None:
    trees.remove_tree(tree)


class _Hashing:
    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.sha = raw, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def commit_tree(store: ImageStore, tree: Path) -> tuple[dict[str, Any], str]:
    """Make the copied ``tree`` a layer: an uncompressed tar blob (digest = diff id) and
    the shared layer directory (``tree`` itself, moved); returns its descriptor and diff
    id.  ``tree`` is gone afterwards, whatever happens."""
    fd, tmpname = tempfile.mkstemp(dir=store.tmp, suffix=".tar")
    try:
        with os.fdopen(fd, "wb") as raw:
            hashed = _Hashing(raw)
            write_layer_tar(tree, hashed)  # type: ignore[arg-type]
            size = raw.tell()
        diff_id = "sha256:" + hashed.sha.hexdigest()
        os.rename(tmpname, store.blob_path(diff_id))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmpname)
        discard(tree)
        raise
    target = store.layers / diff_id.split(":", 1)[1]
    try:
        os.rename(tree, target)
    except OSError:  # the same content was snapshotted before: that copy serves
        discard(tree)
    return {"mediaType": MEDIA_LAYER_TAR, "digest": diff_id, "size": size}, diff_id


def write_snapshot(store: ImageStore, *, sandbox_id: str, base_ref: str | None,
                   layer: tuple[dict[str, Any], str], source: str) -> str:
    """Tag an image of ``base_ref``'s layers and config (none: an image of the layer
    alone, a directory snapshot) with ``layer`` on top; returns its reference."""
    layers: list[tuple[dict[str, Any], str]] = []
    config: dict[str, Any] = {}
    if base_ref is not None:
        layers, whole = store.image_parts(base_ref)
        config = dict(whole.get("config") or {})
    config["Labels"] = {**(config.get("Labels") or {}), SOURCE_LABEL: source}
    layers = [*layers, layer]
    key = hashlib.sha256("\n".join(d for _, d in layers).encode()
                         + source.encode()).hexdigest()[:12]
    ref = f"{SNAPSHOT_REPO}:{sandbox_id}-{key}"
    store.write_image(ref, layers, config)
    return ref
