"""The ids of each volume's files, and so the ids of the sandboxes that mount volumes.

Why: a sandbox that mounted a volume used to share the engine's ids (its root was the
user's own uid, so an escape from it reached every process of the user), because a
volume's files live on the host's disk, which a rootless engine cannot show under another
id map (an idmapped mount of ext4 needs CAP_SYS_ADMIN in the host's namespace: EPERM), and
every sandbox that mounts a volume must see its files with one owner.  Now a volume's
files belong to an id slice of its own (:mod:`hutch.engine.idslices`, recorded in the state
database), and a sandbox that mounts it runs in a user namespace of its own mapped to that
slice.  Escaped, such a sandbox's root owns that volume's files and the processes of the
sandboxes mounting the same volumes (which share those files anyway), and nothing of the
engine, the user or any other sandbox.

A sandbox mounts volumes of one slice: volumes first mounted together get one, and a volume
that has another (or too few ids for the image) moves, when no running sandbox mounts it:
its files' owners are rewritten (``lchown`` of each entry, once: 100,000 files in 0.7 s on
the 2-core test machine).  While one does, creating the sandbox fails with Conflict.  A volume made before this, or written
by sandboxes that shared the engine's ids since (``mixed``: ``HUTCH_USERNS=shared``), moves
the same way, from the engine's ids, at its next mount.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from hutch.engine.errors import Conflict, NotFound
from hutch.engine.idslices import NOBODY, Slice, SliceAllocator
from hutch.engine.store import Store, VolumeIdsRow
from hutch.imagebuild import inroot

log = logging.getLogger("hutch.volumeids")

#: What :func:`plan` knows of a volume's ids: its slice and whether its files must be moved
#: again (sandboxes sharing the engine's ids wrote in it since, or a move was cut short);
#: None: the engine's own ids (a volume never mounted since)
Record = tuple[Slice, bool] | None


class VolumeIds:
    def __init__(self, store: Store, slices: SliceAllocator | None,
                 directory: Callable[[dict[str, Any]], Path]) -> None:
        """``slices``: where sandboxes get ids of their own (None: they share the engine's,
        and volumes keep the ids they have); ``directory``: a volume record's directory."""
        self.store = store
        self.slices = slices
        self.directory = directory
        #: volume name -> the running sandboxes with ids of their own that mount it
        self.users: dict[str, set[str]] = {}
        self.lock = trio.Lock()
        if slices is None:
            return
        for volume_id, row in store.volume_ids().items():
            for piece in _slices_of(row):
                if piece.base < slices.low or piece.base + piece.span - 1 > slices.high \
                        or not slices.hold(piece):
                    log.error("volume %s has ids %s that the engine cannot give it now (a "
                              "smaller /etc/subuid range?); its files show as nobody",
                              volume_id, piece)

    def owner(self, record: dict[str, Any]) -> int | None:
        """The id that what the files API makes in the volume gets (its slice's root)."""
        found = self.store.volume_ids().get(record["volume_id"])
        return None if found is None else found.base

    async def enter(self, sandbox_id: str, names: list[str], size: int) -> Slice:
        """The slice the sandbox ``sandbox_id`` runs with, mounting the volumes ``names``
        (its image needs ``size`` ids); moves volumes to it where needed (in a worker
        thread: one walk of each moved volume).

        A move is recorded before it starts (the new slice, and the old one as ``prev``):
        a daemon killed during it leaves a volume whose next mount finishes it."""
        assert self.slices is not None
        async with self.lock:
            records = {name: self.store.volume(name, create=False) for name in names}
            known = self.store.volume_ids()
            rows = {name: known.get(record["volume_id"]) for name, record in records.items()}
            now: dict[str, Record] = {
                name: None if row is None else (Slice(row.base, row.size), row.mixed)
                for name, row in rows.items()}
            target, needed, moves = plan(now, {n for n in names if self.users.get(n)}, size)
            if target is None:
                target = self.slices.take(needed)
            held = {target, *(p for row in rows.values() if row for p in _slices_of(row))}
            try:
                for name in moves:
                    row, volume_id = rows[name], records[name]["volume_id"]
                    olds = _slices_of(row) if row is not None else []
                    # the oldest the move must still find (the current one unless the
                    # target is it: then an earlier move's origin, if one was cut short)
                    prev = next((o for o in olds if o != target), None)
                    self.store.set_volume_ids(volume_id, target.base, target.size, moving=True,
                                              prev=None if prev is None
                                              else (prev.base, prev.size))
                    changed = await trio.to_thread.run_sync(
                        shift_owners, self.directory(records[name]), olds, target)
                    self.store.set_volume_ids(volume_id, target.base, target.size)
                    log.info("volume %s: %d entries moved to ids %s", name, changed, target)
            finally:
                for piece in held:
                    self._free_if_unused(piece)
            for name in names:
                self.users.setdefault(name, set()).add(sandbox_id)
            return target

    def hold(self, sandbox_id: str, names: list[str]) -> None:
        """Count a running sandbox adopted from a previous daemon."""
        for name in names:
            self.users.setdefault(name, set()).add(sandbox_id)

    def leave(self, sandbox_id: str) -> None:
        for users in self.users.values():
            users.discard(sandbox_id)

    def mark_mixed(self, names: list[str]) -> None:
        """A sandbox that shares the engine's ids mounts ``names``: what it writes has the
        engine's ids, which the next sandbox of the volume's slice moves."""
        for name in names:
            with contextlib.suppress(NotFound):
                record = self.store.volume(name, create=False)
                self.store.mark_volume_ids_mixed(record["volume_id"])

    def forget(self, row: VolumeIdsRow) -> None:
        """A volume whose ids were ``row`` was deleted."""
        for piece in _slices_of(row):
            self._free_if_unused(piece)

    def _free_if_unused(self, piece: Slice) -> None:
        if self.slices is None:
            return
        if not any(piece in _slices_of(row) for row in self.store.volume_ids().values()):
            self.slices.give_back(piece)


def _slices_of(row: VolumeIdsRow) -> list[Slice]:
    """The slices a volume's files may have (its own, and one a move comes from)."""
    found = [Slice(row.base, row.size)]
    if row.prev_base is not None and row.prev_size is not None:
        found.append(Slice(row.prev_base, row.prev_size))
    return found


def plan(now: dict[str, Record], busy: set[str], size: int
         ) -> tuple[Slice | None, int, list[str]]:
    """For a sandbox that mounts the volumes ``now`` (those in ``busy`` are mounted by
    running sandboxes), needing ``size`` ids: the slice it runs with (None: a new one), the
    size that slice needs, and the volumes to move to it."""
    needed = max([size, *(r[0].size for r in now.values() if r is not None)])
    held = {r[0] for name, r in now.items() if name in busy and r is not None}
    if len(held) > 1:
        raise Conflict(
            f"volumes {', '.join(sorted(n for n in busy if now[n] is not None))} are mounted "
            "now by sandboxes with different user ids, and a sandbox mounts volumes of one "
            "id range (docs/security.md); terminate those sandboxes first")
    target = next(iter(held), None)
    if target is not None and target.size < needed:
        raise Conflict(
            f"this sandbox needs {needed} user ids, more than the running sandboxes that "
            f"mount {', '.join(sorted(busy))} have ({target.size}); terminate them first")
    if target is None:  # the largest slice one of them has, if it is large enough
        fitting = sorted((r[0] for r in now.values() if r is not None and r[0].size >= needed),
                         key=lambda piece: (-piece.size, piece.base))
        target = fitting[0] if fitting else None
    moves = [name for name, r in sorted(now.items())
             if target is None or r is None or r[0] != target or r[1]]
    return target, needed, moves


def shifted(value: int, olds: list[Slice], new: Slice) -> int:
    """The id a file owned by engine id ``value``, written under one of ``olds`` or with the
    engine's own ids, gets under ``new``: the same id inside the sandbox."""
    if new.base <= value <= new.base + new.size:
        return value  # already the new slice's (a mixed volume's files mostly are)
    inside = None
    for old in olds:
        if old.base <= value < old.base + old.size:
            inside = value - old.base
        elif value == old.base + old.size:
            inside = NOBODY
    if inside is None:
        if value < new.size or value == NOBODY:  # written with the engine's own ids
            inside = value
        else:
            return value  # no id of a sandbox's: left as it is (it shows as nobody)
    if inside == NOBODY:
        return new.base + new.size
    return new.base + inside if inside < new.size else value


def shift_owners(tree: Path, olds: list[Slice], new: Slice) -> int:
    """Give every entry under ``tree`` (itself included) its owner and group under ``new``
    (:func:`shifted` from ``olds``); how many changed.  Blocking.

    A sandbox that shares the engine's ids may write in the volume meanwhile, so nothing
    is looked up by a path it could redirect: each directory is opened beneath ``tree``'s
    descriptor with no symlink and no other mount on the way, and its entries are changed
    through that descriptor, never following a symlink.  ``chown`` clears set-user-id and
    set-group-id bits, which are put back."""
    top = os.open(tree.resolve(), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    changed = skipped = 0
    try:
        changed += _shift_entry(top, ".", olds, new)
        stack = [""]
        while stack:
            relative = stack.pop()
            try:
                fd = top if not relative else inroot.openat2(
                    top, relative, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                    inroot.RESOLVE_BENEATH | inroot.RESOLVE_NO_SYMLINKS
                    | inroot.RESOLVE_NO_XDEV)
            except OSError:  # gone, swapped for a symlink, or deeper than PATH_MAX
                skipped += 1
                continue
            try:
                with os.scandir(fd) as entries:
                    for item in entries:
                        try:
                            changed += _shift_entry(fd, item.name, olds, new)
                        except OSError:
                            skipped += 1
                            continue
                        if item.is_dir(follow_symlinks=False):
                            stack.append(f"{relative}/{item.name}" if relative else item.name)
            finally:
                if fd != top:
                    os.close(fd)
    finally:
        os.close(top)
    if skipped:
        log.warning("%s: %d entries could not be moved to ids %s", tree, skipped, new)
    return changed


def _shift_entry(parent: int, name: str, olds: list[Slice], new: Slice) -> int:
    st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    uid, gid = shifted(st.st_uid, olds, new), shifted(st.st_gid, olds, new)
    if (uid, gid) == (st.st_uid, st.st_gid):
        return 0
    os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        # never through a symlink swapped in since (Python says so with ValueError)
        with contextlib.suppress(ValueError):
            os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=parent, follow_symlinks=False)
    return 1
