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

import os
import subprocess
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


def make_namespaces(piece: Slice) -> tuple[int, int]:
    """Descriptors of a new user namespace mapped as ``piece`` and of a new network
    namespace that belongs to it: the sandbox's (the runtime joins both).

    A network namespace belongs to the user namespace it was made in, and only a holder of
    CAP_SYS_ADMIN there may mount a sysfs for it; made by the engine, in the engine's, the
    runtime could only bind the host's /sys into the sandbox.  A short-lived
    ``unshare --user`` child makes the user namespace and the engine (root of the parent)
    writes its maps; a second child enters it as its root (``nsenter``), sets its
    ``SANDBOX_COUNTS`` and makes the network namespace.  Both live on in the
    descriptors.  About 4 ms.  The daemon has threads, so it cannot ``unshare`` a user
    namespace itself."""
    env = {"PATH": "/usr/bin:/bin"}
    holder = subprocess.Popen(["unshare", "--user", "--", "sh", "-c", "echo; read x"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, env=env)
    maker: subprocess.Popen[bytes] | None = None
    fds: list[int] = []
    try:
        _wait_ready(holder, "unshare --user")
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{holder.pid}/{name}", "w") as f:
                f.write(piece.map_lines())
        fds.append(os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC))
        counts = "; ".join(f"echo {value} > /proc/sys/user/{name}"
                           for name, value in SANDBOX_COUNTS.items())
        maker = subprocess.Popen(
            ["nsenter", f"--user=/proc/{holder.pid}/ns/user", "--", "sh", "-ec",
             f'{counts}; exec unshare --net -- sh -c "echo; read y"'],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        _wait_ready(maker, "unshare --net")
        fds.append(os.open(f"/proc/{maker.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC))
        return fds[0], fds[1]
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    finally:
        for child in (holder, maker):
            if child is not None:
                assert child.stdin is not None and child.stdout is not None
                child.stdin.close()
                child.stdout.close()
                child.wait()


def _wait_ready(child: subprocess.Popen[bytes], what: str) -> None:
    """Wait for ``child``'s first line: it runs in the namespace it made."""
    assert child.stdout is not None
    if child.stdout.read(1) != b"\n":
        raise OSError(f"{what} failed (exit {child.wait()})")
