"""A content-addressed image store: a real OCI image layout plus unpacked, shared layers.

``<data>/oci`` is a standard OCI image layout (``oci-layout``, ``index.json``,
``blobs/sha256``) that ``skopeo inspect oci:<dir>:<ref>`` and umoci read.  Each layer is
also unpacked once into ``<data>/layers/<diff-id>/``, and that directory is the read-only
overlayfs lowerdir every sandbox of every image using the layer shares, so starting a
sandbox never copies an image.  Blobs and layer directories are named by digests only,
checked to be ``sha256:`` and 64 hex digits before they become paths.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hutch.imagebuild.layertar import write_layer_tar
from hutch.imagebuild.layerunpack import unpack_layer

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
RUNS_CMD_LABEL = "dev.hutch.runs-cmd"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class ImageNotFound(LookupError):
    pass


@dataclass(frozen=True)
class Image:
    """A resolved image: its manifest digest and what a sandbox needs to run it."""

    ref: str
    digest: str
    layer_dirs: list[Path]
    env: dict[str, str] = field(default_factory=dict)
    cmd: list[str] = field(default_factory=list)
    workdir: str = "/"
    entrypoint: list[str] = field(default_factory=list)
    #: Set by an ``entrypoint``/``cmd`` build step: a sandbox without arguments runs them.
    runs_cmd: bool = False


#: How a sandbox's record names a layer of its local files (``copy=False``).
LOCAL_LAYER = "sha256:local-"


def _hex(digest: str) -> str:
    """The hex part of a ``sha256:`` digest, which names a blob or a layer directory; any
    other string (``sha256:../../home``) is refused before it can become a path."""
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return digest.split(":", 1)[1]


class ImageStore:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "oci"
        self.blobs = self.root / "blobs" / "sha256"
        self.layers = data_dir / "layers"
        self.tmp = data_dir / "tmp"
        for d in (self.blobs, self.layers, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        if not (self.root / "oci-layout").exists():
            (self.root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        #: (index.json's inode, mtime, size) -> its refs, as last read (see _refs)
        self._refs_cache: tuple[tuple[int, int, int], dict[str, str], set[str]] | None = None
        if not (self.root / "index.json").exists():
            self._write_index({"schemaVersion": 2, "manifests": []})

    # blobs ------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.blobs / _hex(digest)

    def put_json(self, doc: dict[str, Any]) -> tuple[str, int]:
        data = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.rename(path)
        return digest, len(data)

    def read_json(self, digest: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.blob_path(digest).read_bytes())
        return doc

    # index ------------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _read_index(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((self.root / "index.json").read_text())
        return doc

    def _write_index(self, doc: dict[str, Any]) -> None:
        tmp = self.root / "index.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.rename(self.root / "index.json")

    def tag(self, ref: str, manifest_digest: str, size: int) -> None:
        with self._locked():
            index = self._read_index()
            index["manifests"] = [
                m for m in index["manifests"]
                if m.get("annotations", {}).get(REF_ANNOTATION) != ref
            ]
            index["manifests"].append({
                "mediaType": MEDIA_MANIFEST, "digest": manifest_digest, "size": size,
                "annotations": {REF_ANNOTATION: ref},
            })
            self._write_index(index)

    def _refs(self) -> tuple[dict[str, str], set[str]]:
        """Ref -> manifest digest, and every manifest digest, read again only when
        index.json changed (each write replaces it: a new inode).  Why: every step of
        every build is a tagged image, and a data directory CI had used for weeks held
        2,600 of them: a 770 KB index parsed for every create, and once per image by
        ``GET /v1/images`` (over 10 s)."""
        path = self.root / "index.json"
        stat = path.stat()
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        cached = self._refs_cache
        if cached is None or cached[0] != key:
            manifests = json.loads(path.read_text())["manifests"]
            refs = {m.get("annotations", {}).get(REF_ANNOTATION, m["digest"]): m["digest"]
                    for m in manifests}
            cached = self._refs_cache = (key, refs, {m["digest"] for m in manifests})
        return cached[1], cached[2]

    def lookup(self, ref: str) -> str | None:
        refs, digests = self._refs()
        return refs.get(ref) or (ref if ref in digests else None)

    def refs(self) -> dict[str, str]:
        return dict(self._refs()[0])

    def untag(self, ref: str) -> bool:
        """Remove ``ref`` from the index (its blobs stay until :meth:`prune`)."""
        with self._locked():
            index = self._read_index()
            kept = [m for m in index["manifests"]
                    if m.get("annotations", {}).get(REF_ANNOTATION) != ref]
            if len(kept) == len(index["manifests"]):
                return False
            index["manifests"] = kept
            self._write_index(index)
            return True

    def touch(self, ref: str) -> None:
        """Note that ``ref`` was used now (a cached build step hit): the modification time of
        its manifest blob, which :meth:`expire` reads.  Why the blob: it is written once, so
        its time is free to mean "last used", and noting it rewrites no index."""
        digest = self.lookup(ref)
        if digest is not None:
            with contextlib.suppress(OSError):
                os.utime(self.blob_path(digest))

    def expire(self, prefix: str, older_than: float | None = None,
               keep_bytes: int | None = None, now: float | None = None) -> list[str]:
        """Untag images whose ref starts with ``prefix``: those not used (made, or
        :meth:`touch`-ed) in the last ``older_than`` seconds, then, least recently used
        first, as many as it takes for the layers the rest added (each one's top layer,
        compressed) to fit in ``keep_bytes``, as BuildKit's ``keepStorage`` does.  Returns
        their refs; their blobs and layers go with the next :meth:`prune`."""
        now = time.time() if now is None else now
        cutoff = -math.inf if older_than is None else now - older_than
        with self._locked():
            index = self._read_index()
            candidates: list[tuple[float, int, dict[str, Any]]] = []
            for position, m in enumerate(index["manifests"]):
                if m.get("annotations", {}).get(REF_ANNOTATION, "").startswith(prefix):
                    try:
                        used = self.blob_path(m["digest"]).stat().st_mtime
                    except OSError:
                        used = -math.inf
                    candidates.append((used, position, m))
            gone = {position for used, position, _ in candidates if used < cutoff}
            if keep_bytes is not None:
                held = 0
                for _used, position, m in sorted(candidates, key=lambda c: -c[0]):
                    if position in gone:
                        continue
                    held += self._top_layer_size(m["digest"])
                    if held > keep_bytes:
                        gone.add(position)
            if gone:
                index["manifests"] = [m for position, m in enumerate(index["manifests"])
                                      if position not in gone]
                self._write_index(index)
        return [m.get("annotations", {}).get(REF_ANNOTATION, "")
                for _, position, m in candidates if position in gone]

    def _top_layer_size(self, digest: str) -> int:
        """Bytes of the layer an image adds to its parent (its last), compressed."""
        try:
            layers = self.read_json(digest).get("layers") or [{}]
            return int(layers[-1].get("size", 0))
        except (OSError, ValueError, TypeError):
            return 0

    def prune(self, in_use: set[str]) -> dict[str, int]:
        """Delete blobs and unpacked layers no tagged image (nor ``in_use`` diff ids) needs."""
        with self._locked():
            keep_blobs: set[str] = set()
            # (a sandbox's local files are layers ``local-<key>``: kept while it runs)
            keep_layers: set[str] = {_hex(d) if not d.startswith(LOCAL_LAYER) else
                                     d.removeprefix("sha256:") for d in in_use}
            for m in self._read_index()["manifests"]:
                manifest = self.read_json(m["digest"])
                config = self.read_json(manifest["config"]["digest"])
                keep_blobs |= {_hex(m["digest"]), _hex(manifest["config"]["digest"])}
                keep_blobs |= {_hex(layer["digest"]) for layer in manifest["layers"]}
                keep_layers |= {_hex(d) for d in config["rootfs"]["diff_ids"]}
            removed = {"blobs": 0, "layers": 0, "bytes": 0}
            for blob in self.blobs.iterdir():
                if blob.name not in keep_blobs:
                    removed["bytes"] += blob.stat().st_size
                    blob.unlink()
                    removed["blobs"] += 1
            for layer in self.layers.iterdir():
                if layer.name not in keep_layers:
                    shutil.rmtree(layer, ignore_errors=True)
                    removed["layers"] += 1
        return removed

    # layers -----------------------------------------------------------------------------
    def commit_layer_dir(self, rootfs: Path) -> tuple[dict[str, Any], str]:
        """Turn a directory of changes into a gzip layer blob and a shared layer directory.

        ``rootfs`` is an unpacked root filesystem or a build step's overlay upper directory
        (whose whiteouts become OCI ``.wh.`` entries, :mod:`hutch.imagebuild.layertar`).
        Returns the layer descriptor and the diff id; ``rootfs`` is moved into place.
        """
        fd, tmpname = tempfile.mkstemp(dir=self.tmp, suffix=".tar.gz")
        try:
            with os.fdopen(fd, "wb") as raw, _HashingWriter(raw) as hashed:
                with gzip.GzipFile(fileobj=hashed, mode="wb", compresslevel=1, mtime=0) as gz:
                    diff = _HashingWriter(gz)
                    write_layer_tar(rootfs, diff)  # type: ignore[arg-type]
                blob_digest = "sha256:" + hashed.sha.hexdigest()
                size = hashed.size
        except BaseException:
            os.unlink(tmpname)
            raise
        os.rename(tmpname, self.blob_path(blob_digest))
        diff_id = "sha256:" + diff.sha.hexdigest()
        target = self.layers / _hex(diff_id)
        if target.exists():
            shutil.rmtree(rootfs)
        else:
            rootfs.rename(target)
        return {"mediaType": MEDIA_LAYER_GZIP, "digest": blob_digest, "size": size}, diff_id

    def image_parts(self, ref: str) -> tuple[list[tuple[dict[str, Any], str]], dict[str, Any]]:
        """An image's layers as ``(descriptor, diff id)`` and its whole config document."""
        digest = self.lookup(ref)
        if digest is None:
            raise ImageNotFound(ref)
        manifest = self.read_json(digest)
        config = self.read_json(manifest["config"]["digest"])
        layers = list(zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True))
        return layers, config

    def ensure_unpacked(self, layer: dict[str, Any], diff_id: str) -> Path:
        """The shared directory of a layer, unpacking its blob once if needed (OCI whiteouts
        become overlay whiteouts, :func:`hutch.imagebuild.layerunpack.unpack_layer`)."""
        target = self.layers / _hex(diff_id)
        if not target.exists():
            unpack_layer(self.blob_path(layer["digest"]), layer["mediaType"], diff_id, target,
                         self.tmp)
        return target

    def write_image(self, ref: str, layers: list[tuple[dict[str, Any], str]],
                    config: dict[str, Any]) -> str:
        """Write the config and manifest blobs for ``layers`` and tag the result ``ref``."""
        image_config = {
            "architecture": _oci_arch(),
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]},
        }
        cfg_digest, cfg_size = self.put_json(image_config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": cfg_digest, "size": cfg_size},
            "layers": [desc for desc, _ in layers],
        }
        digest, size = self.put_json(manifest)
        self.tag(ref, digest, size)
        return digest

    def resolve(self, ref: str) -> Image:
        digest = self.lookup(ref)
        if digest is None:
            raise ImageNotFound(ref)
        manifest = self.read_json(digest)
        config = self.read_json(manifest["config"]["digest"])
        dirs = [
            self.ensure_unpacked(desc, diff_id)
            for desc, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"],
                                     strict=True)
        ]
        cfg = config.get("config", {})
        env = dict(e.split("=", 1) for e in cfg.get("Env", []) if "=" in e)
        return Image(ref=ref, digest=digest, layer_dirs=dirs, env=env,
                     cmd=list(cfg.get("Cmd") or []), workdir=cfg.get("WorkingDir") or "/",
                     entrypoint=list(cfg.get("Entrypoint") or []),
                     runs_cmd=(cfg.get("Labels") or {}).get(RUNS_CMD_LABEL) == "true")


class _HashingWriter:
    """A file wrapper that hashes and counts what passes through it."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        written: int = self.raw.write(data)
        return written

    def flush(self) -> None:
        self.raw.flush()

    def __enter__(self) -> _HashingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.raw.flush()


def _oci_arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
