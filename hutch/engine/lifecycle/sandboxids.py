"""Which sandboxes get user ids of their own, and what each holds for them: a slice of
the engine's ids (:mod:`hutch.engine.isolation.idslices`) and in-memory copies of its image's layers
(:mod:`hutch.engine.storage.layermirror`).

Every sandbox gets its own, except where that cannot work (a sandbox that mounts volumes
gets their slice, :mod:`hutch.engine.storage.volumeids`):

* the engine maps a single id (no ``/etc/subuid`` range) or runs as root: there are no
  ids to give (``hutch doctor`` says so);
* ``HUTCH_USERNS=shared`` (set where the engine starts) turns it off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from hutch.api import paths
from hutch.engine.isolation import idslices
from hutch.engine.kernel import acl, linux
from hutch.engine.storage.layermirror import LayerMirror
from hutch.engine.storage.store import SandboxSpec

log = logging.getLogger("hutch.sandboxids")

#: Seconds between sweeps of the layer copies no sandbox uses.
SWEEP_INTERVAL = 60.0


class SandboxIds:
    def __init__(self, userns_mode: str, runtime_dir: Path) -> None:
        self.slices = None
        if os.environ.get("HUTCH_USERNS", "own") != "shared":
            self.slices = idslices.allocator_for_engine(userns_mode)
        self.mirror: LayerMirror | None = None
        self.roots: Path | None = None
        self.runtime_dir = runtime_dir
        if self.slices is not None:
            self.mirror = LayerMirror(runtime_dir / "layers")
            self.mirror.mount()
            self.roots = _roots_view(runtime_dir)
            log.info("sandboxes get user ids of their own: engine ids %d..%d",
                     self.slices.low, self.slices.high)
        else:
            log.warning("sandboxes share the engine's user ids (user namespace mode %s%s)",
                        userns_mode, ", HUTCH_USERNS=shared"
                        if os.environ.get("HUTCH_USERNS") == "shared" else "")

    def visible_dir(self, sandbox_dir: Path, piece: idslices.Slice) -> Path:
        """Where the sandbox's root will reach ``sandbox_dir`` (the runtime resolves the
        root file system and the ``/etc`` files there after it entered the sandbox's user
        namespace, and the data directory, often the user's home too, lets no other id
        through): the launch binds it there once its mounts are made
        (:func:`bind_visible`).  Only that root may pass through the directory itself."""
        assert self.roots is not None
        if not os.path.ismount(self.roots):  # removed from /tmp on the host meanwhile
            log.warning("%s was unmounted; making another", self.roots)
            self.roots = _roots_view(self.runtime_dir)
        acl.grant_search(sandbox_dir, [piece.root])
        (sandbox_dir / "etc").mkdir(mode=0o711, exist_ok=True)
        return self.roots / sandbox_dir.name

    def unbind(self, sandbox_dir: Path) -> None:
        """Detach the sandbox's view (and the mounts it holds: its root file system), and
        let its root through its directory no more (a later sandbox may get its ids)."""
        if self.roots is None:
            return
        with contextlib.suppress(OSError):
            acl.grant_search(sandbox_dir, [])
        point = self.roots / sandbox_dir.name
        if os.path.ismount(point):
            linux.umount(str(point), linux.MNT_DETACH)
        with contextlib.suppress(OSError):
            point.rmdir()

    def wanted(self) -> bool:
        return self.slices is not None

    async def take(self, sandbox_id: str, layers: list[Path],
                   volumes: Callable[[int], Awaitable[idslices.Slice]] | None = None
                   ) -> tuple[idslices.Slice, list[Path]]:
        """A slice for the new sandbox ``sandbox_id`` and the copies of ``layers`` it
        mounts (made now where missing, in a worker thread).  ``volumes``: the sandbox
        mounts volumes, and this gives the slice they share, for an image of a given size
        (:meth:`hutch.engine.storage.volumeids.VolumeIds.enter`)."""
        assert self.slices is not None and self.mirror is not None
        copies, highest = await trio.to_thread.run_sync(self.mirror.acquire, sandbox_id,
                                                        layers)
        size = idslices.size_for(highest)
        try:
            return (await volumes(size) if volumes is not None
                    else self.slices.take(size)), copies
        except BaseException:
            self.mirror.release(sandbox_id)
            raise

    def hold(self, sandbox_id: str, spec: SandboxSpec) -> None:
        """Count what a sandbox adopted from a previous daemon holds."""
        piece = idslices.Slice.from_record(spec.ids)
        if piece is None or self.slices is None or self.mirror is None:
            return
        # (a volumes' slice is held already by them, unless this engine could not: then
        # by the sandbox, until the engine stops)
        if not self.slices.hold(piece):
            log.error("sandbox %s holds ids %s that another one holds", sandbox_id, piece)
        self.mirror.hold(sandbox_id, [str(name).removeprefix("sha256:")
                                      for name in spec.layers])

    def hold_layers(self, sandbox_id: str, names: list[str]) -> None:
        """Count an adopted sandbox as a user of more in-memory copies (its image mounts')."""
        if self.mirror is not None and names:
            self.mirror.hold(sandbox_id, names)

    def give_back(self, sandbox_id: str, spec: SandboxSpec) -> None:
        """Free what the ended sandbox held: once nothing of it runs (its processes had
        its ids, which the next sandbox must not share)."""
        piece = idslices.Slice.from_record(spec.ids)
        if piece is not None and self.slices is not None and not _of_volumes(spec):
            self.slices.give_back(piece)  # (volumes keep theirs)
        if self.mirror is not None:
            self.mirror.release(sandbox_id)

    async def sweep_forever(self) -> None:
        if self.mirror is None:
            return
        while True:
            await trio.sleep(SWEEP_INTERVAL)
            gone = await trio.to_thread.run_sync(self.mirror.sweep)
            if gone:
                log.info("freed the in-memory copies of %d unused layers", len(gone))


def _of_volumes(spec: SandboxSpec) -> bool:
    """Whether the sandbox's slice is its volumes' (which hold it, not the sandbox)."""
    ids = spec.ids
    return isinstance(ids, dict) and bool(ids.get("volumes"))


def _roots_view(runtime_dir: Path) -> Path:
    """Where each sandbox's directory is bound for its own root to reach (see
    :meth:`SandboxIds.visible_dir`): a small tmpfs, searchable by all and listable by
    none (0711), on a new directory in /tmp (``mkdtemp``: nobody can have put it there
    first).  Mounted in the engine's mount namespace only: on the host it is an empty
    directory.  Made once per pause process (its path is kept in ``roots`` in the
    runtime directory)."""
    record = runtime_dir / paths.ROOTS
    with contextlib.suppress(OSError):
        known = Path(record.read_text().strip())
        if os.path.ismount(known):
            return known
    made = Path(tempfile.mkdtemp(prefix="hutch-roots-", dir="/tmp"))
    made.chmod(0o711)
    linux.mount("tmpfs", str(made), "tmpfs", linux.MS_NODEV | linux.MS_NOSUID | linux.MS_NOEXEC,
                "mode=0711,size=1m")
    record.write_text(str(made))
    return made


def bind_visible(sandbox_dir: Path, point: Path) -> None:
    """Bind ``sandbox_dir`` with everything mounted in it at ``point`` (a private copy:
    nothing mounted or unmounted in either later shows in the other, so a helper that
    copies the engine's mounts and unmounts them, as slirp4netns' sandbox does, cannot
    take a sandbox's root file system away)."""
    point.mkdir(mode=0o711)
    linux.mount(str(sandbox_dir), str(point), None, linux.MS_BIND | linux.MS_REC)
