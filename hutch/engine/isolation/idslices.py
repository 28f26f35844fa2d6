"""Each sandbox's own user namespace: a disjoint slice of the engine's ids for it.

Why: with one user namespace for the engine and every sandbox, root in one sandbox is the
same kernel uid as root in every other and as the engine, so anything that gets out of a
sandbox's pid namespace can signal, trace and read them all.  Like ``podman
--userns=auto``, each sandbox's ids 0..size-1 map to ``base..base+size-1`` of the engine's
namespace and its ``nobody`` (65534) to ``base+size``: escaped, its root owns nothing but
its own.  A slice holds the image's ids and at least ``MIN_SIZE`` (Debian's default 65,536
subuids hold 61 sandboxes of debian_slim); when none is free, creating a sandbox fails
with the fix, never falling back to shared ids.
Details: docs/security.md, "Each sandbox its own ids".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hutch.engine.errors import Exhausted
from hutch.engine.kernel.userns import subid_range

#: The id a sandbox's ``nobody``/``nogroup`` has; mapped apart from the slice's low ids.
NOBODY = 65534
#: The fewest ids below ``NOBODY`` a sandbox gets.
MIN_SIZE = 1024
#: The most (ids 0..65533; ``nobody`` apart).
MAX_SIZE = NOBODY
#: With a small subordinate range, slices start here (image files rarely use ids above).
LOW_SMALL_RANGE = 2048
#: With a large one, above every id an image file can have.
LOW_LARGE_RANGE = 65536
#: The range the error for too few ids suggests (1 Mi ids, 959 sandboxes; high enough to
#: miss the ranges ``useradd`` gives, from 100000 up).
EXAMPLE_RANGE = "1000000000-1001048575"


@dataclass(frozen=True)
class Slice:
    """Sandbox ids ``0..size-1`` are engine ids ``base..base+size-1``; sandbox ``NOBODY``
    is ``base+size``."""

    base: int
    size: int

    @property
    def span(self) -> int:
        return self.size + 1

    @property
    def root(self) -> int:
        """The engine id of the sandbox's root."""
        return self.base

    def map_lines(self) -> str:
        """The ``uid_map``/``gid_map`` text of a namespace with this slice."""
        return f"0 {self.base} {self.size}\n{NOBODY} {self.base + self.size} 1\n"

    def oci_mappings(self) -> list[dict[str, int]]:
        """The runtime-spec ``uidMappings``/``gidMappings`` of this slice."""
        return [{"containerID": 0, "hostID": self.base, "size": self.size},
                {"containerID": NOBODY, "hostID": self.base + self.size, "size": 1}]

    def record(self) -> dict[str, int]:
        return {"base": self.base, "size": self.size}

    @classmethod
    def from_record(cls, value: object) -> Slice | None:
        if isinstance(value, dict) and isinstance(value.get("base"), int) \
                and isinstance(value.get("size"), int):
            return cls(value["base"], value["size"])
        return None


def size_for(max_id: int) -> int:
    """The slice size for an image whose highest id (``NOBODY`` and 65535 aside) is
    ``max_id``."""
    return min(MAX_SIZE, max(MIN_SIZE, max_id + 1))


class SliceAllocator:
    """First-fit allocation of slices from the engine ids ``low..high`` (inclusive)."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high
        self.taken: dict[int, Slice] = {}  # base -> slice

    @property
    def capacity_ids(self) -> int:
        return max(0, self.high - self.low + 1)

    def take(self, size: int) -> Slice:
        span = size + 1
        start = self.low
        for base in sorted(self.taken):
            if base - start >= span:
                break
            start = max(start, base + self.taken[base].span)
        if start + span - 1 > self.high:
            raise Exhausted(
                f"no free user-id slice of {span} ids for a new sandbox: the engine's "
                f"{self.capacity_ids} ids ({self.low}..{self.high} of its namespace) are "
                f"held by {len(self.taken)} sandboxes and volumes. Each sandbox (or volume) "
                f"gets ids of its own (docs/security.md); give the user a larger range, e.g. "
                f"as root `usermod --add-subuids {EXAMPLE_RANGE} --add-subgids "
                f"{EXAMPLE_RANGE} USER`, then `hutch engine stop`")
        made = Slice(start, size)
        self.taken[start] = made
        return made

    def hold(self, piece: Slice) -> bool:
        """Mark ``piece`` (a recovered sandbox's) as taken; False if it overlaps one."""
        end = piece.base + piece.span
        for other in self.taken.values():
            if piece.base < other.base + other.span and other.base < end:
                return piece == other
        self.taken[piece.base] = piece
        return True

    def give_back(self, piece: Slice) -> None:
        if self.taken.get(piece.base) == piece:
            del self.taken[piece.base]


def _extent_total(text: str) -> int:
    """How many ids a ``uid_map`` maps (0 for an unreadable one)."""
    total = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2].isdigit():
            total += int(parts[2])
    return total


def allocator_for_engine(mode: str, proc: Path = Path("/proc/self"),
                         subid_files: tuple[str, str] = ("/etc/subuid", "/etc/subgid")
                         ) -> SliceAllocator | None:
    """The slices this engine can give, or None where sandboxes share its namespace: a
    single-id map (no subordinate range), and root mode without a subordinate range for
    root (an engine run as root gives slices of root's range, host ids themselves, as
    rootful ``podman --userns=auto`` does with its ``containers`` range)."""
    if mode == "root":
        su, sg = (subid_range(f, 0) for f in subid_files)
        if su is None or sg is None:
            return None
        low, high = max(su.start, sg.start), min(su.start + su.count, sg.start + sg.count) - 1
        return SliceAllocator(low, high) if high - low + 1 >= MIN_SIZE + 1 else None
    if mode != "subuid":
        return None
    ids = min(_extent_total((proc / "uid_map").read_text()),
              _extent_total((proc / "gid_map").read_text()))
    region = _region(ids)
    return None if region is None else SliceAllocator(*region)


def _region(ids: int) -> tuple[int, int] | None:
    """The engine ids slices come from, where its namespace maps ``ids`` ids."""
    high = ids - 1  # ids 0..ids-1 are mapped; 0 is the engine (the user) itself
    low = LOW_LARGE_RANGE if ids > 2 * LOW_LARGE_RANGE else LOW_SMALL_RANGE
    if high - low + 1 < MIN_SIZE + 1:
        return None
    return low, high


def capacity(subordinate_ids: int, size: int = MIN_SIZE) -> int:
    """How many sandboxes of ``size`` ids an engine whose user has ``subordinate_ids``
    subordinate ids runs at once (``hutch doctor``)."""
    region = _region(subordinate_ids + 1)
    return 0 if region is None else (region[1] - region[0] + 1) // (size + 1)


#: Per-namespace counts (``/proc/sys/user``) the engine sets in each sandbox's user
#: namespace, where the sandbox, holding no CAP_SYS_RESOURCE, cannot raise them.  The
#: kernel also charges everything a sandbox makes to the user who owns its namespace, so
#: without them one sandbox could take all of the user's inotify instances (128 by
#: default: the user's desktop watchers, the engine's ``logs(follow)`` and every other
#: sandbox's ``watch`` then fail).  No sandbox makes user namespaces (its seccomp filter
#: refuses it too).
SANDBOX_COUNTS = {"max_inotify_instances": 32, "max_inotify_watches": 65536,
                  "max_user_namespaces": 0}
# (a child of the engine's fork server makes a sandbox's namespaces and sets these:
# hutch.engine.commands.nsmaker.sandbox_namespaces)
