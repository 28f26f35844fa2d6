"""Unpacking one layer blob into its shared directory, safely: what both imports and
:meth:`hutch.imagebuild.layout.ImageStore.ensure_unpacked` do.

A layer is untrusted input.  Every entry is resolved by the kernel inside the layer's
directory (:mod:`hutch.imagebuild.inroot`: no ``..``, no writes through symlinks, no
device nodes, no hard links out, no entry larger than the disk can spare), OCI whiteouts
become what overlayfs reads (``.wh.<name>`` a 0:0 character device, ``.wh..wh..opq`` the
``user.overlay.opaque`` xattr), and the content is checked against its diff id in a scratch
directory before it is renamed into place.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import IO

from hutch.imagebuild import inroot
from hutch.imagebuild.inroot import UnsafeEntry

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class ImportFailed(RuntimeError):
    pass


def check_digest(digest: object, what: str) -> str:
    """``digest`` if it is ``sha256:`` and 64 hex digits; an image names its blobs and
    layers this way, and anything else (``sha256:../../home``) would become a path."""
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise ImportFailed(f"the image's {what} {digest!r} is not a sha256 digest")
    return digest


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
