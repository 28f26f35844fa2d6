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
are the blobs moved and the image tagged, so an import that fails leaves nothing behind.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from hutch.imagebuild import inroot
from hutch.imagebuild.inroot import UnsafeEntry

if TYPE_CHECKING:
    from hutch.imagebuild.layout import ImageStore

LogLine = Callable[[str], None]
LOCAL_REGISTRIES = ("localhost", "127.0.0.1", "[::1]")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class ImportFailed(RuntimeError):
    pass


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
        argv = ["skopeo", "copy", "--remove-signatures", source, f"oci:{work}:image"]
        host = source.removeprefix("docker://").split("/", 1)[0].rsplit(":", 1)[0]
        if source.startswith("docker://") and host in LOCAL_REGISTRIES:
            argv.insert(2, "--src-tls-verify=false")
        if credentials:
            argv[2:2] = ["--src-creds", credentials]
        log_line(f"skopeo copy {source}")
        proc = subprocess.run(argv, capture_output=True, text=True)
        for line in (proc.stdout + proc.stderr).splitlines():
            log_line(line)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-10:])
            raise ImportFailed(f"skopeo could not copy {source}: {tail}")
        return _adopt(store, work, ref, log_line)
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


def check_digest(digest: object, what: str) -> str:
    """``digest`` if it is ``sha256:`` and 64 hex digits; an image names its blobs and
    layers this way, and anything else (``sha256:../../home``) would become a path."""
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise ImportFailed(f"the image's {what} {digest!r} is not a sha256 digest")
    return digest


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / check_digest(digest, "blob").split(":", 1)[1]


class _Hashing:
    """A readable stream that hashes what is read through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha.update(data)
        return data


def _decompressed(path: Path, media_type: str) -> tuple[IO[bytes], subprocess.Popen[bytes] | None]:
    if media_type.endswith("+zstd"):
        proc = subprocess.Popen(["zstd", "-dc", str(path)], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        return proc.stdout, proc
    if media_type.endswith("+gzip") or media_type.endswith(".gzip"):
        return gzip.open(path, "rb"), None  # type: ignore[return-value]
    if media_type.endswith(".tar") or media_type.endswith("tar"):
        return open(path, "rb"), None
    raise ImportFailed(f"unsupported layer media type {media_type}")


def unpack_layer(blob: Path, media_type: str, diff_id: str, target: Path, tmp: Path) -> None:
    """Unpack one layer blob into ``target`` as an overlayfs lowerdir (nothing is left
    behind if it fails)."""
    place_layer(stage_layer(blob, media_type, check_digest(diff_id, "diff id"), tmp), target)


def stage_layer(blob: Path, media_type: str, diff_id: str, tmp: Path) -> Path:
    """Unpack a layer blob into a new scratch directory under ``tmp`` and check it against
    its diff id; returns that directory.  On any failure it is removed and
    :class:`ImportFailed` says why."""
    work = Path(tempfile.mkdtemp(dir=tmp, prefix="layer-"))
    try:
        stream, proc = _decompressed(blob, media_type)
        hashing = _Hashing(stream)
        try:
            with tarfile.open(fileobj=hashing, mode="r|") as tar:  # type: ignore[call-overload]
                extract_safely(tar, work, whiteouts=True)
            while hashing.read(1 << 20):  # the tar's padding counts for the diff id
                pass
        except BaseException:
            if proc is not None:
                proc.kill()
            raise
        finally:
            stream.close()
            if proc is not None:
                proc.wait()
        if proc is not None and proc.returncode != 0:
            raise ImportFailed(f"zstd failed on layer {diff_id}")
        if "sha256:" + hashing.sha.hexdigest() != diff_id:
            raise ImportFailed(f"layer content does not match its diff id {diff_id}")
        return work
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(exc, UnsafeEntry | OSError | tarfile.TarError | EOFError | zlib.error):
            raise ImportFailed(f"layer {diff_id[:19]}: {exc}") from exc
        raise


def place_layer(work: Path, target: Path) -> None:
    """Rename a complete, checked layer into the store (an empty directory there, left by
    nothing hutch does, would be replaced; another import's copy of it wins)."""
    try:
        work.rename(target)
    except OSError:
        shutil.rmtree(work, ignore_errors=True)  # another import unpacked it first


def extract_safely(tar: tarfile.TarFile, root: Path, *, whiteouts: bool,
                   under: str = "/") -> None:
    """Extract every member of ``tar`` under ``root`` (into the directory ``under`` of it)
    without ever leaving ``root`` (:mod:`hutch.imagebuild.inroot`).

    ``whiteouts``: an image layer, unpacked into an empty directory: OCI whiteouts become
    overlay ones and no symlink is followed.  Otherwise a build context, written into a
    mounted image: its entries are ordinary files, and the image's symlinks are followed
    inside ``root`` as the sandbox would see them.
    """
    fd = inroot.open_root(root)
    try:
        ex = inroot.Extractor(fd, follow=not whiteouts, whiteouts=whiteouts)
        dest = ex.make_dirs(under)
        os.close(dest)
        ex.extract_all(tar, inroot.components(under))
    finally:
        os.close(fd)
