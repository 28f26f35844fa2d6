"""Local files a sandbox takes from the host when it starts (``add_local_dir(copy=False)``).

Modal's default for local files: nothing is built, the files are whatever the directory
holds when the sandbox starts, and a changed file needs no rebuild.  Here they become one
more lower layer of the sandbox's overlay, on top of the image's: read-only under the
sandbox's own upper directory, so the sandbox changes what it sees (copy-up) and never the
host.

Why a copy, not the host directory itself as the lower layer: a sandbox runs under ids of
its own (:mod:`hutch.engine.isolation.idslices`), and a rootless engine cannot show the
host's disk under another id map (idmapped mounts of ext4 are refused, ``EPERM``): the
host's files would be ``nobody``'s in the sandbox, readable at best and never writable,
even in the sandbox's own copy-on-write view.  So the tree is copied once into a layer
directory of the engine's (``<data>/layers/local-<key>``, then shown under each sandbox's
ids like any layer), keyed by what the tree *is*: its path, destination and every
entry's name, type, size, mode and modification time (a walk of ``lstat`` calls, about
60 ms for 10,000 files).  An unchanged tree is not copied again; a changed one is copied
once, for the sandboxes created after the change, and only what changed is copied: the
files its earlier copy holds unchanged are hard links to that copy's.  ``hutch image
prune`` removes copies no running sandbox uses.

The tree is the user's own, named by the user's own client, and read with the user's
rights: links are copied as links (resolved inside the sandbox, as the sandbox sees its
files), sockets, FIFOs and devices are left out, and a tree larger than
:data:`MAX_BYTES` or :data:`MAX_ENTRIES` is refused.  The directories leading to the
destination take the mode and owner the image gives them (``/tmp`` stays 1777); a
destination that passes through a symbolic link of the image is refused, since the layer
would replace the link with a directory.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from hutch.api.models import LocalMount
from hutch.engine.errors import Invalid
from hutch.engine.kernel import trees
from hutch.imagebuild import inroot

#: Most bytes and entries one mount may copy.
MAX_BYTES = 8 << 30
MAX_ENTRIES = 500_000
PREFIX = "local-"


class _Walk:
    """Entries of a tree to copy: kept ones fingerprinted, excluded and special ones
    skipped, totals checked against the limits."""

    def __init__(self, mount: LocalMount) -> None:
        self.mount = mount
        self.excluded = {e.strip("/") for e in mount.exclude}
        self.sha = hashlib.sha256()
        self.bytes = 0
        self.entries = 0

    def keep(self, rel: str, st: os.stat_result) -> bool:
        if rel in self.excluded:
            return False
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)
                or stat.S_ISLNK(st.st_mode)):
            return False
        self.entries += 1
        self.bytes += st.st_size if stat.S_ISREG(st.st_mode) else 0
        if self.entries > MAX_ENTRIES or self.bytes > MAX_BYTES:
            raise Invalid(f"local files at {self.mount.source}: more than {MAX_ENTRIES} "
                          f"entries or {MAX_BYTES >> 30} GiB; use a smaller directory or "
                          "ignore= patterns")
        self.sha.update(f"{rel}\0{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return True

    def tree(self, root: Path) -> None:
        for dirpath, dirnames, filenames in os.walk(root):
            base = os.path.relpath(dirpath, root)
            base = "" if base == "." else base
            kept = []
            for name in sorted([*dirnames, *filenames]):
                rel = f"{base}/{name}" if base else name
                st = os.lstat(os.path.join(dirpath, name))
                if self.keep(rel, st) and name in dirnames and stat.S_ISDIR(st.st_mode):
                    kept.append(name)
            dirnames[:] = kept  # (os.walk does not descend into links)


def identity(mount: LocalMount) -> str:
    """Which tree at which place (12 hex digits): the first part of a layer's key, shared
    by every copy of that tree, edited or not, on whatever image."""
    text = "\0".join([mount.source, mount.dest, str(mount.file)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def fingerprint(mount: LocalMount, image_layers: Sequence[Path]) -> str:
    """What the copy of ``mount`` would be: the key of its layer directory (its
    :func:`identity`, then 20 hex digits of what the tree holds)."""
    source = Path(mount.source)
    try:
        st = os.stat(source)
    except OSError as exc:
        raise Invalid(f"local files at {mount.source}: {exc.strerror}") from exc
    if mount.file != stat.S_ISREG(st.st_mode) or not (mount.file or stat.S_ISDIR(st.st_mode)):
        raise Invalid(f"local files at {mount.source}: not a "
                      f"{'file' if mount.file else 'directory'}")
    walk = _Walk(mount)
    walk.sha.update("\0".join([mount.source, mount.dest, str(mount.file),
                               *(p.name for p in image_layers)]).encode())
    walk.keep("", st) if mount.file else walk.tree(source)
    return identity(mount) + walk.sha.hexdigest()[:20]


def _stat_beneath(directory: Path, rel: str) -> os.stat_result:
    """``rel`` in ``directory``, reached without following any link on the way or at its
    end (``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS``); OSError (``ELOOP`` for a link)."""
    root = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = inroot.openat2(root, rel, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC,
                            inroot.RESOLVE_BENEATH | inroot.RESOLVE_NO_SYMLINKS
                            | inroot.RESOLVE_NO_XDEV)
    finally:
        os.close(root)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def _image_entry(layers: Sequence[Path], path: str) -> os.stat_result | None:
    """``path`` as the image's top layer that has it shows it (None: no layer has it,
    a layer above deleted it, or one reaches it only through a link of its own).

    Each layer is looked into beneath its own directory without following any link
    (``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS``): a layer's ``/a -> /home/me`` must not
    make the engine describe the host's ``/home/me/...`` to the sandbox.  A layer where
    a directory on the way is a link (or not a directory) hides what lies below it, as
    overlayfs shows it."""
    for layer in reversed(layers):
        try:
            st = _stat_beneath(layer, path)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
                return None  # a link or file on the way: nothing below shows through
            continue
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            return None  # a whiteout
        return st
    return None


def _prefix(root: Path, dest: str, layers: Sequence[Path]) -> Path:
    """The directories of ``root`` leading to ``dest`` (not ``dest``), as the image has
    them; ``dest``'s own path in ``root``."""
    parts = PurePosixPath(dest).parts[1:]
    current = root
    for index in range(len(parts) - 1):
        rel = "/".join(parts[:index + 1])
        current = root / rel
        st = _image_entry(layers, rel)
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise Invalid(f"local files for {dest}: /{rel} is a symbolic link in the image; "
                          "name the path it leads to")
        current.mkdir()
        if st is not None and stat.S_ISDIR(st.st_mode):
            os.chmod(current, stat.S_IMODE(st.st_mode))
            os.chown(current, st.st_uid, st.st_gid)
    return root / "/".join(parts)


def _copy_tree(source: Path, target: Path, walk: _Walk, earlier: Path | None) -> None:
    """Copy the kept entries of ``source`` to ``target``.  A file that an ``earlier``
    copy of the same tree holds unchanged (same size, mode and modification time; copies
    keep the source's) is hard-linked from it instead: layer directories are never
    written once made, so sharing their files is safe, and an edit of one file in a
    10,000-file tree copies one file."""
    def copy(src: str, dst: str) -> str:
        if earlier is not None and _unchanged(earlier, os.path.relpath(src, source), src):
            os.link(earlier / os.path.relpath(src, source), dst, follow_symlinks=False)
            return dst
        return str(shutil.copy2(src, dst))

    def ignore(directory: str, names: list[str]) -> set[str]:
        base = os.path.relpath(directory, source)
        skipped = set()
        for name in names:
            rel = name if base == "." else f"{base}/{name}"
            if not walk.keep(rel, os.lstat(os.path.join(directory, name))):
                skipped.add(name)
        return skipped

    shutil.copytree(source, target, symlinks=True, ignore=ignore, copy_function=copy,
                    dirs_exist_ok=True)


def _unchanged(earlier: Path, rel: str, src: str) -> bool:
    """Whether the earlier copy holds ``rel`` as a regular file the same as ``src`` is
    now, reached without following any link (the copy holds the tree's links as links:
    ``sub -> /elsewhere`` then must not lead the engine out of it)."""
    try:
        old, new = _stat_beneath(earlier, rel), os.lstat(src)
    except OSError:
        return False
    return stat.S_ISREG(old.st_mode) and \
        (old.st_size, old.st_mode, old.st_mtime_ns) == (new.st_size, new.st_mode, new.st_mtime_ns)


def _earlier_copy(layers_dir: Path, ident: str, dest: str) -> Path | None:
    """The destination directory of the newest copy of the same tree, if any."""
    def made(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:  # (pruned meanwhile)
            return 0.0

    found = sorted(layers_dir.glob(f"{PREFIX}{ident}*"), key=made)
    place = found[-1] / dest.lstrip("/") if found else None
    return place if place is not None and place.is_dir() and not place.is_symlink() else None


def layer(layers_dir: Path, tmp: Path, mount: LocalMount, image_layers: Sequence[Path]
          ) -> Path:
    """The layer directory holding ``mount``'s files at its destination: found, or
    copied now (blocking; for a worker thread)."""
    key = fingerprint(mount, image_layers)
    target = layers_dir / f"{PREFIX}{key}"
    if target.is_dir():
        return target
    work = Path(tempfile.mkdtemp(dir=tmp, prefix="local-"))
    try:
        root = work / "layer"
        root.mkdir()
        root.chmod(0o755)
        dest = _prefix(root, mount.dest, image_layers)
        walk = _Walk(mount)
        try:
            if mount.file:
                shutil.copy2(mount.source, dest)
            else:
                earlier = _earlier_copy(layers_dir, key[:12], mount.dest)
                _copy_tree(Path(mount.source), dest, walk, earlier)
        except (OSError, shutil.Error) as exc:
            raise Invalid(f"local files at {mount.source}: cannot copy: {exc}") from exc
        try:
            root.rename(target)
        except OSError:
            if not target.is_dir():  # (another create copied the same tree first: use it)
                raise
        return target
    finally:
        trees.remove_tree(work)
