"""Image layers in memory, mounted into each sandbox under that sandbox's own ids.

Why: a sandbox with its own user ids (:mod:`hutch.engine.isolation.idslices`) must see the image's
files owned by *its* root, not by the engine's.  The kernel can show a directory under
another id map (an idmapped mount), but only of a file system whose owning namespace the
caller is privileged in: a rootless engine may idmap a tmpfs it mounted itself, not the
host's disk (``EPERM``, measured on Linux 6.18), and overlayfs mounts cannot be idmapped
at all (``EINVAL``).  So the layers a running sandbox uses are copied once into a tmpfs
of the engine's (``cp -a``: owners, modes, times, hard links and the overlay's user
xattrs kept), and each sandbox mounts them through its own map as its overlay's lower
directories.  One copy serves every sandbox of the image, whatever their slices, and
its page cache is shared by all of them, as the disk's is today.

The cost is memory: a layer in use is held in RAM (debian_slim with Python and Modal's
toolchain: about 615 MiB), until ``IDLE_SECONDS`` after its last sandbox ended.  The
copies live in the pause process's mount namespace, so a restarted daemon finds them (and
sandboxes that still run keep theirs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from hutch.engine.isolation import idslices
from hutch.engine.kernel import linux, trees

log = logging.getLogger("hutch.layermirror")

#: Seconds a layer no sandbox uses stays in memory (a burst of creates reuses it).
IDLE_SECONDS = 300.0
#: The file beside a copy that records the highest id its files and passwd/group use.
MAX_ID_SUFFIX = ".maxid"
#: Ids that every slice maps apart, or that mean "no id": not counted in an image's size.
_UNCOUNTED = {idslices.NOBODY, 65535}


@dataclass
class _Layer:
    path: Path
    max_id: int
    users: set[str] = field(default_factory=set)
    idle_since: float = 0.0


def max_id_of(tree: Path) -> int:
    """The highest owner id of ``tree``'s files and of the ids its ``etc/passwd`` and
    ``etc/group`` name (``NOBODY`` and 65535 aside)."""
    highest = 0
    for st in trees.walk_stats(tree):
        for value in (st.st_uid, st.st_gid):
            if value not in _UNCOUNTED:
                highest = max(highest, value)
    for name, column in (("etc/passwd", (2, 3)), ("etc/group", (2,))):
        try:
            with open(tree / name, "rb") as f:
                text = f.read(1 << 20).decode(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            parts = line.split(":")
            for i in column:
                if len(parts) > i and parts[i].isdigit() and int(parts[i]) not in _UNCOUNTED:
                    highest = max(highest, int(parts[i]))
    return highest


class LayerMirror:
    """The tmpfs at ``root`` and the layer copies in it, by layer directory name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.layers: dict[str, _Layer] = {}
        self.lock = threading.Lock()  # copies are made in worker threads
        self.copying: dict[str, threading.Lock] = {}

    def mount(self) -> None:
        """Mount the tmpfs (once per pause process) and adopt the complete copies in it."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not os.path.ismount(self.root):
            linux.mount("tmpfs", str(self.root), "tmpfs", linux.MS_NODEV | linux.MS_NOSUID,
                        "mode=0700")
        self.adopt()

    def adopt(self) -> None:
        """Take the complete copies found in the tmpfs (a previous daemon's) as made;
        remove the rest."""
        for entry in self.root.iterdir():
            if entry.name.endswith(".tmp"):
                trees.remove_tree(entry)
                continue
            marker = self.root / (entry.name + MAX_ID_SUFFIX)
            if entry.is_dir() and marker.exists():
                self.layers[entry.name] = _Layer(entry, int(marker.read_text()),
                                                 idle_since=time.monotonic())
            elif not entry.name.endswith(MAX_ID_SUFFIX):
                trees.remove_tree(entry)  # a copy cut short

    def acquire(self, user: str, layers: list[Path]) -> tuple[list[Path], int]:
        """The in-memory copies of ``layers`` (made now where missing; blocking, for a
        worker thread), held for ``user`` until :meth:`release`; and the highest id
        they use."""
        copies, highest = [], 0
        for layer in layers:
            copy = self._ensure(layer)
            with self.lock:
                copy.users.add(user)
            copies.append(copy.path)
            highest = max(highest, copy.max_id)
        return copies, highest

    def _ensure(self, layer: Path) -> _Layer:
        name = layer.name
        with self.lock:
            found = self.layers.get(name)
            if found is not None:
                return found
            gate = self.copying.setdefault(name, threading.Lock())
        with gate:
            with self.lock:
                found = self.layers.get(name)
            if found is not None:
                return found
            tmp = self.root / (name + ".tmp")
            trees.remove_tree(tmp)
            result = subprocess.run(
                ["cp", "-R", "--no-dereference",
                 "--preserve=mode,ownership,timestamps,links,xattr", f"{layer}/.", str(tmp)],
                capture_output=True, text=True)
            if result.returncode != 0:
                trees.remove_tree(tmp)
                raise OSError(f"copying layer {name} into memory: {result.stderr.strip()}")
            highest = max_id_of(tmp)
            final = self.root / name
            tmp.rename(final)
            (self.root / (name + MAX_ID_SUFFIX)).write_text(str(highest))
            made = _Layer(final, highest)
            with self.lock:
                self.layers[name] = made
                self.copying.pop(name, None)
            return made

    def release(self, user: str) -> None:
        now = time.monotonic()
        with self.lock:
            for layer in self.layers.values():
                if user in layer.users:
                    layer.users.discard(user)
                    if not layer.users:
                        layer.idle_since = now

    def hold(self, user: str, names: list[str]) -> None:
        """Count a recovered sandbox as a user of the copies it mounted."""
        with self.lock:
            for name in names:
                if name in self.layers:
                    self.layers[name].users.add(user)

    def sweep(self, now: float | None = None, idle: float = IDLE_SECONDS) -> list[str]:
        """Free the copies no sandbox used for ``idle`` seconds; returns their names."""
        now = time.monotonic() if now is None else now
        with self.lock:
            gone = [name for name, layer in self.layers.items()
                    if not layer.users and now - layer.idle_since >= idle]
            for name in gone:
                del self.layers[name]
                # out of the way at once: a copy made again under this name is another
                (self.root / (name + MAX_ID_SUFFIX)).unlink(missing_ok=True)
                (self.root / name).rename(self.root / f"{name}.{os.getpid()}.gone.tmp")
        for name in gone:
            trees.remove_tree(self.root / f"{name}.{os.getpid()}.gone.tmp")
        return gone


def mount_lowers(copies: list[Path], into: Path, userns_fd: int) -> list[Path]:
    """Mount each copy at ``into/<n>`` through the map of ``userns_fd``; the mount
    points, in the order given."""
    into.mkdir(mode=0o700, exist_ok=True)
    points = []
    for n, copy in enumerate(copies):
        point = into / str(n)
        point.mkdir(exist_ok=True)
        linux.idmapped_bind(str(copy), str(point), userns_fd)
        points.append(point)
    return points


def unmount_lowers(into: Path) -> None:
    """Detach what :func:`mount_lowers` mounted (the overlay above them first)."""
    if not into.is_dir():
        return
    for point in sorted(into.iterdir()):
        if os.path.ismount(point):
            linux.umount(str(point), linux.MNT_DETACH)
        with contextlib.suppress(OSError):
            point.rmdir()
    with contextlib.suppress(OSError):
        into.rmdir()
