"""An overlayfs upper directory as a standard OCI layer tar, whiteouts included.

A build step's changes are the upper directory of the overlay it ran on.  Overlayfs marks
a deleted file with a 0:0 character device and a directory whose lower contents are hidden
with the ``user.overlay.opaque`` xattr (``userxattr`` mounts, as the engine uses); the OCI
image spec writes the same facts as ``.wh.<name>`` and ``.wh..wh..opq`` entries.  The tar is
written in sorted order with numeric owners, so the same changes give the same digest.

The upper directory itself stays the unpacked layer: its overlay whiteouts are exactly what
a lowerdir needs.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTRS = ("user.overlay.opaque", "trusted.overlay.opaque")


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: Path) -> bool:
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


def _walk(root: Path, rel: str = "") -> Iterator[tuple[Path, str]]:
    """``(path, name in the tar)`` for everything under ``root``, parents first, sorted."""
    with os.scandir(root / rel if rel else root) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        name = f"{rel}/{entry.name}" if rel else entry.name
        yield Path(entry.path), name
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(root, name)


def write_layer_tar(upper: Path, out: BinaryIO) -> None:
    """Write ``upper`` to ``out`` as an uncompressed OCI layer tar."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path, name in _walk(upper):
            st = os.lstat(path)
            if _is_whiteout(st):
                parent, _, base = name.rpartition("/")
                marker = tarfile.TarInfo(f"{parent}/{WHITEOUT_PREFIX}{base}" if parent
                                         else f"{WHITEOUT_PREFIX}{base}")
                marker.mtime = int(st.st_mtime)
                tar.addfile(marker)
                continue
            if stat.S_ISSOCK(st.st_mode):
                continue  # a socket left by a build step is not content
            info = tar.gettarinfo(str(path), arcname=name)
            info.uname = info.gname = ""
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
            if info.isdir() and _is_opaque(path):
                opaque = tarfile.TarInfo(f"{name}/{OPAQUE_MARKER}")
                opaque.mtime = int(st.st_mtime)
                tar.addfile(opaque)
