"""Images from elsewhere: a registry, an OCI layout directory or an OCI archive, via skopeo.

skopeo copies the image into a scratch OCI layout (converting Docker manifests to OCI);
its blobs then move into the store and each layer is unpacked once into its shared
directory, turning OCI whiteouts into what overlayfs reads: ``.wh.<name>`` becomes a 0:0
character device and ``.wh..wh..opq`` the ``user.overlay.opaque`` xattr.

An image is untrusted input.  Every digest and diff id it names must be ``sha256:`` and 64
hex digits before it becomes a path; every entry of a layer is resolved by the kernel
inside the layer's directory (:mod:`hutch.imagebuild.inroot`: no ``..``, no writes
through symlinks, no device nodes, no hard links out, no entry larger than the disk can
spare).  Layers are unpacked into scratch directories and checked against their diff ids;
only when all of them are complete are they renamed into the shared store, and only then
are the blobs moved and the image tagged, so an import that fails leaves nothing behind
(unpacking: :mod:`hutch.imagebuild.layerunpack`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hutch.imagebuild.layerunpack import ImportFailed, check_digest, place_layer, stage_layer
from hutch.imagebuild.layout import ImageStore
from hutch.imagebuild.registryauth import scrub, write_auth_file

__all__ = ["ImportFailed", "import_image", "plain_http", "skopeo_source"]

LogLine = Callable[[str], None]
LOCAL_REGISTRIES = ("localhost", "127.0.0.1", "[::1]")


def plain_http(reference: str) -> bool:
    """Whether a registry reference (``docker://`` optional) names a registry on this host's
    loopback, which skopeo reaches over plain HTTP (pulls and pushes alike); without a
    ``/`` there is no registry host (``localhost:1`` is Docker Hub's ``library/localhost``)."""
    host, slash, _ = reference.removeprefix("docker://").partition("/")
    if not slash:
        return False
    if not host.startswith("["):
        host = host.split(":", 1)[0]
    elif "]" in host:
        host = host[:host.index("]") + 1]
    return host in LOCAL_REGISTRIES


def skopeo_source(kind: str, location: str) -> str:
    """The skopeo transport string for a registry reference, layout dir or archive."""
    if kind == "registry":
        return f"docker://{location}"
    if kind == "oci_layout":
        return f"oci:{location}"
    return f"oci-archive:{location}"


def import_image(store: ImageStore, source: str, ref: str, log_line: LogLine,
                 credentials: str | None = None) -> str:
    """Copy ``source`` (a skopeo transport string) into the store as ``ref``."""
    if shutil.which("skopeo") is None:
        raise ImportFailed("skopeo is not installed: apt-get install skopeo")
    work = Path(tempfile.mkdtemp(dir=store.tmp, prefix="import-"))
    try:
        argv = ["skopeo", "copy", "--remove-signatures", source, f"oci:{work}/layout:image"]
        if source.startswith("docker://") and plain_http(source):
            argv.insert(2, "--src-tls-verify=false")
        if credentials:  # in a file of the import's own: a command line is public
            write_auth_file(work / "auth.json", source.removeprefix("docker://"), credentials)
            argv[2:2] = ["--src-authfile", str(work / "auth.json")]
        log_line(f"skopeo copy {source}")
        proc = subprocess.run(argv, capture_output=True, text=True)
        for line in (proc.stdout + proc.stderr).splitlines():
            log_line(scrub(line, credentials))
        if proc.returncode != 0:
            tail = scrub("\n".join(proc.stderr.strip().splitlines()[-10:]), credentials)
            raise ImportFailed(f"skopeo could not copy {source}: {tail}")
        return _adopt(store, work / "layout", ref, log_line)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _adopt(store: ImageStore, layout: Path, ref: str, log_line: LogLine) -> str:
    """Move the image skopeo wrote into the store: every layer unpacked and checked first,
    then all of them renamed into place, then the blobs, then the tag; an image that fails
    anywhere before leaves nothing in the store."""
    try:
        index = json.loads((layout / "index.json").read_text())
        manifest_desc = index["manifests"][0]
        manifest: dict[str, Any] = json.loads(_blob(layout, manifest_desc["digest"]).read_bytes())
        config_digest = check_digest(manifest["config"]["digest"], "config")
        config: dict[str, Any] = json.loads(_blob(layout, config_digest).read_bytes())
        diff_ids = [check_digest(d, "diff id") for d in config["rootfs"]["diff_ids"]]
        layers = [(check_digest(d["digest"], "layer"), str(d["mediaType"]))
                  for d in manifest["layers"]]
        if len(layers) != len(diff_ids):
            raise ImportFailed(f"the image has {len(layers)} layers and {len(diff_ids)} "
                               "diff ids")
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise ImportFailed(f"the image's index, manifest or config is malformed: {exc}") \
            from exc
    staged: dict[Path, Path] = {}
    try:
        for (digest, media_type), diff_id in zip(layers, diff_ids, strict=True):
            target = store.layers / diff_id.split(":", 1)[1]
            if not target.exists() and target not in staged:
                log_line(f"unpacking layer {diff_id[:19]}")
                staged[target] = stage_layer(_blob(layout, digest), media_type, diff_id,
                                             store.tmp)
        for target, work in list(staged.items()):
            place_layer(work, target)
            del staged[target]
    finally:
        for work in staged.values():
            shutil.rmtree(work, ignore_errors=True)
    for digest in [manifest_desc["digest"], config_digest, *[d for d, _ in layers]]:
        dest = store.blob_path(digest)
        if not dest.exists():
            os.replace(_blob(layout, digest), dest)
    store.tag(ref, manifest_desc["digest"], manifest_desc["size"])
    return ref


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / check_digest(digest, "blob").split(":", 1)[1]
