"""The ids of each volume's files, and so the ids of the sandboxes that mount volumes.

Why: a rootless engine cannot show the host's disk under another id map (an idmapped mount
of ext4 needs CAP_SYS_ADMIN in the host's namespace), yet every sandbox that mounts a volume
must see its files with one owner; such sandboxes used to share the engine's ids.  So a
volume's files belong to an id slice of their own (:mod:`hutch.engine.isolation.idslices`,
recorded in the state database), and a sandbox that mounts it runs mapped to that slice:
escaped, its root owns its slice's volumes and their sandboxes, nothing else.  A volume of
another slice is *moved* when unused (``lchown`` of each entry: 100,000 files in 0.7 s);
otherwise creating the sandbox fails with Conflict.
Details: docs/security.md, "Each sandbox its own ids" ("Sandboxes with volumes").
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import trio

from hutch.engine.errors import Conflict, NotFound
from hutch.engine.isolation.idslices import NOBODY, Slice, SliceAllocator
from hutch.engine.storage.store import Store, VolumeIdsRow
from hutch.imagebuild import inroot

log = logging.getLogger("hutch.volumeids")

#: What :func:`plan` knows of a volume's ids: its slice and whether its files must be moved
#: again (sandboxes sharing the engine's ids wrote in it, or a move did not finish); None:
#: no slice it can keep (the engine's own ids, or one this engine cannot hold)
Record = tuple[Slice, bool] | None
#: Directories deeper than this stay unmoved (each level holds two descriptors during the
#: walk, one walk at a time, and a user's default limit is 1024); the move is then left
#: unfinished, and those files' old slice stays theirs (held, not given to another).
MAX_MOVE_DEPTH = 128


class VolumeIds:
    def __init__(self, store: Store, slices: SliceAllocator | None,
                 directory: Callable[[str], Path],
                 files_busy: Callable[[str], bool] = lambda name: False) -> None:
        """``slices``: where sandboxes get ids of their own (None: they share the engine's,
        and volumes keep the ids they have); ``directory``: a volume's directory, by name
        (made where missing); ``files_busy``: whether a files call works in a volume now
        (its worker threads, also those its caller gave up on)."""
        self.store = store
        self.slices = slices
        self.directory = directory
        self.files_busy = files_busy
        #: volume name -> the running sandboxes that mount it (also those sharing the
        #: engine's ids: adopted from an engine that ran so), and creates about to
        self.users: dict[str, set[str]] = {}
        #: the slice of each of those with ids of its own
        self.running: dict[str, Slice] = {}
        #: volume name -> files calls writing in it now, and the volumes being moved
        self.writers: dict[str, int] = {}
        self.moving: set[str] = set()
        self._locks: dict[str, trio.Lock] = {}
        #: one move at a time (each holds two descriptors per directory level)
        self._walks = trio.CapacityLimiter(1)
        #: recorded slices this engine could not hold (its id range changed): moved away
        self.unheld: set[Slice] = set()
        if slices is None:
            return
        for volume_id, row in store.volume_ids().items():
            for piece in slices_of(row):
                if piece.base < slices.low or piece.base + piece.span - 1 > slices.high \
                        or not slices.hold(piece):
                    log.error("volume %s has ids %s that this engine cannot hold (its "
                              "/etc/subuid range changed?): it moves at its next mount",
                              volume_id, piece)
                    self.unheld.add(piece)
                    _reserve_in_range(slices, piece)

    @contextlib.asynccontextmanager
    async def locked(self, names: list[str]) -> AsyncIterator[None]:
        """Hold the locks of the volumes ``names`` (in one order: no deadlock)."""
        wanted = sorted(set(names))
        try:
            async with contextlib.AsyncExitStack() as stack:
                for name in wanted:
                    await stack.enter_async_context(self._locks.setdefault(name, trio.Lock()))
                yield
        finally:
            for name in wanted:  # (names a caller made up leave nothing behind)
                lock = self._locks.get(name)
                if lock is not None and not lock.locked() \
                        and lock.statistics().tasks_waiting == 0:
                    del self._locks[name]

    def owner(self, record: dict[str, Any]) -> int | None:
        """The id what the engine makes in the volume ``record`` gets (its slice's root)."""
        found = self.store.volume_ids_of(record["volume_id"])
        return None if found is None else found.base

    @contextlib.contextmanager
    def writing(self, record: dict[str, Any]) -> Iterator[int | None]:
        """Around a files call that makes files in the volume ``record``: the owner they
        get (its slice's root); a volume being moved refuses (its owner is changing)."""
        name = record["name"]
        if name in self.moving:
            raise Conflict(f"Volume {name!r} is being moved to new user ids for a sandbox "
                           "that mounts it; try again in a moment")
        self.writers[name] = self.writers.get(name, 0) + 1
        try:
            yield self.owner(record)
        finally:
            self.writers[name] -= 1
            if not self.writers[name]:
                del self.writers[name]

    async def enter(self, sandbox_id: str, names: list[str], size: int) -> Slice:
        """The slice the sandbox ``sandbox_id`` runs with, mounting the volumes ``names``
        (its image needs ``size`` ids); moves volumes to it where needed (in a worker
        thread: one walk of each).  The sandbox counts as their user from here on
        (:meth:`leave` ends it).

        A move is recorded before it starts (the new slice, and the old ones as ``prev``,
        held until every file left them): a daemon killed during it, or a tree deeper
        than ``MAX_MOVE_DEPTH``, leaves a volume whose next mount goes on with it.  A
        slice is given back only at the moment no volume's record names it any more."""
        assert self.slices is not None
        async with self.locked(names):
            records = {name: self.store.volume(name, create=False) for name in names}
            known = self.store.volume_ids()
            rows = {name: known.get(record["volume_id"]) for name, record in records.items()}
            now: dict[str, Record] = {
                name: None if row is None or Slice(row.base, row.size) in self.unheld
                else (Slice(row.base, row.size), row.mixed or bool(row.prev))
                for name, row in rows.items()}
            size = max([size, *(p.size for row in rows.values() if row
                                for p in slices_of(row) if p in self.unheld)])
            target, needed, moves = plan(now, {n for n in names if self._busy(n, rows[n])},
                                         size)
            for name in moves:
                if self.writers.get(name) or self.files_busy(name):
                    raise Conflict(f"files are being written into volume {name!r}; try "
                                   "again when that call ended")
            fresh = None
            if target is None:
                target = fresh = self.slices.take(needed)
            self.moving.update(moves)
            try:
                for name in moves:
                    await self._move(name, records[name]["volume_id"], rows[name], target)
            finally:
                self.moving.difference_update(moves)
                if fresh is not None:  # (unless a record names it now)
                    self._free_if_unused(fresh)
            for name in names:
                self.users.setdefault(name, set()).add(sandbox_id)
            self.running[sandbox_id] = target
            return target

    def _busy(self, name: str, row: VolumeIdsRow | None) -> bool:
        """Whether a running sandbox mounts the volume, or has one of its slices (and so
        may hold its files open through another volume of the slice)."""
        if self.users.get(name):
            return True
        return row is not None and any(piece in slices_of(row)
                                       for piece in self.running.values())

    async def _move(self, name: str, volume_id: str, row: VolumeIdsRow | None,
                    target: Slice) -> None:
        olds = [p for p in slices_of(row) if p != target] if row is not None else []
        self.store.set_volume_ids(volume_id, target.base, target.size, moving=True,
                                  prev=[(p.base, p.size) for p in olds])
        tree = self.directory(name)
        keep = row is not None and target in slices_of(row)  # its files may have it already
        changed, skipped = await trio.to_thread.run_sync(
            shift_owners, tree, olds, target, keep, limiter=self._walks)
        if skipped:  # left moving: the next mount tries again; their old slices stay held
            log.warning("volume %s: %d entries moved to ids %s, %d could not be (deeper than "
                        "%d directories, or unreadable); they keep their old ids", name,
                        changed, target, skipped, MAX_MOVE_DEPTH)
            return
        self.store.set_volume_ids(volume_id, target.base, target.size)
        for piece in olds:  # no await since the record stopped naming them
            self._free_if_unused(piece)
        log.info("volume %s: %d entries moved to ids %s", name, changed, target)

    def hold(self, sandbox_id: str, names: list[str], piece: Slice | None) -> None:
        """Count a running sandbox adopted from a previous daemon: ``piece``, its slice
        (None: it shares the engine's ids, so what it writes in its volumes has those,
        ``mixed``)."""
        for name in names:
            self.users.setdefault(name, set()).add(sandbox_id)
        if piece is not None:
            self.running[sandbox_id] = piece
        else:
            self.mark_mixed(names)

    def leave(self, sandbox_id: str) -> None:
        """The sandbox ended and nothing of it runs (or its create failed)."""
        self.running.pop(sandbox_id, None)
        for name in [name for name, users in self.users.items() if sandbox_id in users]:
            self.users[name].discard(sandbox_id)
            if not self.users[name]:
                del self.users[name]

    def mark_mixed(self, names: list[str]) -> None:
        """A sandbox that shares the engine's ids mounts ``names``: what it writes has the
        engine's ids, which the next move of each volume moves too."""
        for name in names:
            with contextlib.suppress(NotFound):
                record = self.store.volume(name, create=False)
                self.store.mark_volume_ids_mixed(record["volume_id"])

    def forget(self, row: VolumeIdsRow) -> None:
        """A volume whose ids were ``row`` was deleted (under its lock)."""
        for piece in slices_of(row):
            self._free_if_unused(piece)

    def _free_if_unused(self, piece: Slice) -> None:
        if self.slices is None or piece in self.unheld:
            return  # (a slice it could not hold is not its to give back)
        if not any(piece in slices_of(row) for row in self.store.volume_ids().values()):
            self.slices.give_back(piece)


def _reserve_in_range(slices: SliceAllocator, piece: Slice) -> None:
    """Keep the part of ``piece`` (a slice some volume's files still have) that lies in
    the engine's range from going to a sandbox, until the engine stops."""
    low, high = max(piece.base, slices.low), min(piece.base + piece.span - 1, slices.high)
    if low <= high and not slices.hold(Slice(low, high - low)):
        log.error("ids %d..%d are held twice: a volume's files and another's slice", low, high)


def slices_of(row: VolumeIdsRow) -> list[Slice]:
    """The slices a volume's files may have (its own, and those a move comes from)."""
    return [Slice(row.base, row.size), *(Slice(b, n) for b, n in row.prev)]


def plan(now: dict[str, Record], busy: set[str], size: int
         ) -> tuple[Slice | None, int, list[str]]:
    """For a sandbox that mounts the volumes ``now`` (those in ``busy`` are mounted by
    running sandboxes, which never see a move), needing ``size`` ids: the slice it runs
    with (None: a new one), the size that slice needs, and the volumes to move to it."""
    needed = max([size, *(r[0].size for r in now.values() if r is not None)])
    homeless = sorted(name for name in busy if now[name] is None)
    if homeless:
        raise Conflict(f"volumes {', '.join(homeless)} are mounted now by sandboxes with ids "
                       "this engine cannot give them (the engine's own, or of an earlier "
                       "id range: started by an earlier engine); terminate them first")
    held = {r[0] for name, r in now.items() if name in busy and r is not None}
    if len(held) > 1:
        raise Conflict(
            f"volumes {', '.join(sorted(busy))} are mounted now by sandboxes with "
            "different user ids, and a sandbox mounts volumes of one id range "
            "(docs/security.md); terminate those sandboxes first")
    target = next(iter(held), None)
    if target is not None and target.size < needed:
        raise Conflict(
            f"this sandbox needs {needed} user ids, more than the running sandboxes that "
            f"mount {', '.join(sorted(busy))} have ({target.size}); terminate them first")
    if target is None:  # the largest slice one of them has, if it is large enough
        fitting = sorted((r[0] for r in now.values() if r is not None and r[0].size >= needed),
                         key=lambda piece: (-piece.size, piece.base))
        target = fitting[0] if fitting else None
    moves = [name for name, r in sorted(now.items()) if name not in busy
             and (target is None or r is None or r[0] != target or r[1])]
    return target, needed, moves


def shifted(value: int, olds: list[Slice], new: Slice, keep: bool = True) -> int:
    """The id a file owned by engine id ``value``, written under one of ``olds`` or with the
    engine's own ids, gets under ``new``: the same id inside the sandbox, or its nobody
    where ``new`` has no such id.  ``keep``: the volume had ``new`` already, so ids of
    ``new`` are kept as they are."""
    if keep and new.base <= value <= new.base + new.size:
        return value  # already the new slice's (a mixed volume's files mostly are)
    inside = value  # written with the engine's own ids, unless one of olds has it
    for old in olds:
        if old.base <= value < old.base + old.size:
            inside = value - old.base
        elif value == old.base + old.size:
            inside = NOBODY
    if inside == NOBODY or inside >= new.size:
        return new.base + new.size
    return new.base + inside


def shift_owners(tree: Path, olds: list[Slice], new: Slice, keep: bool = True
                 ) -> tuple[int, int]:
    """Give every entry under ``tree`` (itself included) its owner and group under ``new``
    (:func:`shifted` from ``olds``, ``keep``); how many changed, and how many could not be.
    Blocking.

    Nothing writes in the volume meanwhile (:meth:`VolumeIds.enter`), and still nothing is
    looked up by a path a sandbox could have redirected: each directory is opened from its
    parent's descriptor, by one name, with no symlink and no other mount on the way, and
    its entries are changed through that descriptor, never following a symlink.  Memory
    and descriptors grow with the depth only (the walk holds one directory per level).
    ``chown`` clears set-user-id and set-group-id bits, which are put back."""
    top = os.open(tree.resolve(), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    changed = skipped = 0
    # (a directory's descriptor, and its listing: os.scandir works on a copy of it)
    frames: list[tuple[int, Any]] = []
    try:
        changed += _shift_entry(top, ".", olds, new, keep)
        frames.append((top, os.scandir(top)))
        while frames:
            fd, entries = frames[-1]
            item = next(entries, None)
            if item is None:
                frames.pop()
                entries.close()
                if fd != top:
                    os.close(fd)
                continue
            try:
                changed += _shift_entry(fd, item.name, olds, new, keep)
            except OSError:
                skipped += 1
                continue
            if not item.is_dir(follow_symlinks=False):
                continue
            if len(frames) >= MAX_MOVE_DEPTH:
                skipped += 1  # (and what is below it)
                continue
            try:
                child = inroot.openat2(fd, item.name, os.O_RDONLY | os.O_DIRECTORY
                                       | os.O_CLOEXEC, inroot.RESOLVE_BENEATH
                                       | inroot.RESOLVE_NO_SYMLINKS | inroot.RESOLVE_NO_XDEV)
            except OSError:
                skipped += 1
                continue
            try:
                frames.append((child, os.scandir(child)))
            except BaseException:
                os.close(child)
                raise
    finally:
        for fd, entries in frames:
            entries.close()
            if fd != top:
                os.close(fd)
        os.close(top)
    return changed, skipped


def _shift_entry(parent: int, name: str, olds: list[Slice], new: Slice, keep: bool) -> int:
    st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    uid, gid = shifted(st.st_uid, olds, new, keep), shifted(st.st_gid, olds, new, keep)
    if (uid, gid) == (st.st_uid, st.st_gid):
        return 0
    os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        # never through a symlink swapped in since (Python says so with ValueError)
        with contextlib.suppress(ValueError):
            os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=parent, follow_symlinks=False)
    return 1
