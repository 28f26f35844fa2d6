"""A disk limit for every sandbox: its writable layer on a file system of a fixed size.

Why: a sandbox writes its files into its overlay's upper directory, and without a bound
one sandbox filled the host's disk (issue 15's red team: 2 GiB in seconds, and more with
``fallocate``).  A rootless engine has no way to bound a directory on the host's file
system: project quotas are set only from the host's namespace (and this kernel has no
quota support at all: ``CONFIG_QFMT_V2``, ``XFS_QUOTA`` and ``TMPFS_QUOTA`` are unset), and
it may not mount a disk file system.  So the host's root makes them once, as it delegates
cgroups (``tools/setup-host.sh``): *slots*, each a sparse file formatted ext4 and
loop-mounted at ``/var/lib/hutch-disks/<user>/<n>``, owned by the user, mounted with
``discard`` (a deleted file gives its blocks back to the host's disk).  The engine puts
each sandbox's upper and work directories in a free slot, so its writes end with ENOSPC
at the slot's size (16 GiB by default), and empties the slot when the sandbox ends.

Without slots (no set-up), sandboxes write without a bound, as before; ``hutch doctor``
warns.  With slots, a sandbox is refused (``ResourceExhaustedError``) when all are in use,
rather than run without its bound.  ``ephemeral_disk`` sandboxes use their own tmpfs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import time
from pathlib import Path

from hutch.engine.errors import Exhausted
from hutch.engine.kernel import trees

log = logging.getLogger("hutch.diskslots")

#: Where ``tools/setup-host.sh`` mounts a user's slots (``HUTCH_DISK_SLOTS_DIR`` overrides).
DEFAULT_ROOT = "/var/lib/hutch-disks"
#: What a slot holds for its sandbox.
CONTENTS = ("upper", "work")
#: What a volume slot holds: the volume's files.
VOLUME_CONTENTS = ("data",)


def slots_root(user: str) -> Path:
    return Path(os.environ.get("HUTCH_DISK_SLOTS_DIR", f"{DEFAULT_ROOT}/{user}"))


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


#: A slot's claim: a directory made with ``mkdir`` (atomic: of two engines of the user that
#: try at once, one wins), holding ``by``: "<data dir> <sandbox id>".
CLAIM = "claim"


class DiskSlots:
    """The slots under ``root``: mount points named by numbers that this engine may write.
    Every engine of the user shares them; each claims a slot before it uses it."""

    def __init__(self, root: Path, owner: str = "", *, mounts_only: bool = True,
                 contents: tuple[str, ...] = CONTENTS) -> None:
        self.root = root
        self.owner = owner  # this engine (its data directory), in claims
        self.contents = contents  # what a holder keeps in a slot (emptied when it ends)
        self.slots: list[Path] = []
        self.taken: dict[Path, str] = {}  # slot -> sandbox id
        try:
            names = sorted((p for p in root.iterdir() if p.name.isdigit()),
                           key=lambda p: int(p.name))
        except OSError:
            names = []
        for path in names:
            if (os.path.ismount(path) or not mounts_only) \
                    and os.access(path, os.W_OK | os.X_OK):
                # the user's alone: a sandbox's files are no other host user's to read
                # (in the data directory, 0700, they were not either)
                with contextlib.suppress(OSError):
                    path.chmod(0o700)
                self.slots.append(path)
        if self.slots:
            log.info("%d disk slots of %d MiB under %s", len(self.slots),
                     self.size_mib(self.slots[0]), root)

    @classmethod
    def for_engine(cls, data_dir: Path, user: str | None = None) -> DiskSlots:
        """``user``: the host user the engine runs for (inside its namespace it is root)."""
        return cls(slots_root(user or _user_name()), str(data_dir))

    @classmethod
    def for_volumes(cls, data_dir: Path, user: str | None = None) -> DiskSlots:
        """The slots volumes live in (``<slots>/volumes/<n>``, each volume in ``data``)."""
        return cls(slots_root(user or _user_name()) / "volumes", str(data_dir),
                   contents=VOLUME_CONTENTS)

    @property
    def enabled(self) -> bool:
        return bool(self.slots)

    @staticmethod
    def size_mib(slot: Path) -> int:
        st = os.statvfs(slot)
        return st.f_blocks * st.f_frsize // (1024 * 1024)

    def take(self, sandbox_id: str) -> Path | None:
        """A free, empty slot for ``sandbox_id``; None where there are no slots."""
        if not self.slots:
            return None
        for slot in self.slots:
            if slot in self.taken:
                continue
            try:
                (slot / CLAIM).mkdir(mode=0o700)
            except FileExistsError:
                continue  # another engine's (or what a crash left, emptied at recovery)
            (slot / CLAIM / "by").write_text(f"{self.owner} {sandbox_id}\n")
            self.taken[slot] = sandbox_id  # (emptied when it was given back)
            return slot
        raise Exhausted(
            f"all {len(self.slots)} disk slots under {self.root} are in use: each sandbox "
            f"and each volume writes on a file system of its own (docs/limits.md); make more "
            f"as root with HUTCH_DISK_SLOTS=<n> (HUTCH_VOLUME_SLOTS=<n>) "
            f"tools/setup-host.sh, or end some sandboxes (delete some volumes)")

    def hold(self, slot: Path, sandbox_id: str) -> None:
        """Count the slot of a sandbox adopted from a previous daemon."""
        if slot in self.slots:
            self.taken[slot] = sandbox_id

    def give_back(self, slot: Path) -> None:
        """Empty the slot (its sandbox has ended; blocking, for a worker thread) and make
        it free."""
        if slot in self.taken:
            del self.taken[slot]
            if _empty(slot, self.contents):
                trees.remove_tree(slot / CLAIM)
            else:  # left claimed (and out of use) rather than handed out half full
                log.error("could not empty disk slot %s: it stays out of use", slot)

    def empty_free(self) -> None:
        """Empty the slots this engine claimed that none of its sandboxes holds now (what
        a crash left in them); other engines' claims stay."""
        for slot in self.slots:
            if slot in self.taken:
                continue
            try:
                by = (slot / CLAIM / "by").read_text().split()
            except OSError:
                by = []
            if (slot / CLAIM).exists() and (by[:1] == [self.owner] or (not by and _stale(slot))):
                if _empty(slot, self.contents):
                    trees.remove_tree(slot / CLAIM)
                else:
                    log.error("could not empty disk slot %s: it stays out of use", slot)


#: Seconds after which a claim that names no holder is taken for one its engine never
#: finished (it writes the name at once after the ``mkdir``).
STALE_CLAIM = 60.0


def _stale(slot: Path) -> bool:
    try:
        return time.time() - (slot / CLAIM).stat().st_mtime > STALE_CLAIM
    except OSError:
        return False


def _empty(slot: Path, contents: tuple[str, ...]) -> bool:
    """Remove what a holder kept in ``slot``; whether all of it is gone."""
    return all([trees.remove_tree(slot / name) for name in contents])
