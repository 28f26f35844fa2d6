"""The engine's user namespace: which ids it maps and how.

Like podman, hutch maps the calling user to root inside the namespace and the user's
``/etc/subuid``/``/etc/subgid`` range to ids 1..N, using the setuid helpers newuidmap and
newgidmap (Debian package ``uidmap``).  Without a range it falls back to mapping the single
user id, which runs most images but not those whose files belong to other users; the
fallback is logged and reported by ``hutch doctor``.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("hutch.userns")


@dataclass(frozen=True)
class SubIdRange:
    start: int
    count: int


def subid_range(file: str, uid: int) -> SubIdRange | None:
    """The first range of subordinate ids that ``file`` grants the user ``uid``."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = None
    try:
        lines = Path(file).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) != 3 or line.startswith("#"):
            continue
        owner, start, count = parts
        if owner in (name, str(uid)) and start.isdigit() and count.isdigit() and int(count) > 0:
            return SubIdRange(int(start), int(count))
    return None


@dataclass(frozen=True)
class IdMapPlan:
    """How the namespace of process ``pid`` will be mapped."""

    uid: int
    gid: int
    subuid: SubIdRange | None
    subgid: SubIdRange | None

    @property
    def full(self) -> bool:
        return (self.subuid is not None and self.subgid is not None
                and shutil.which("newuidmap") is not None
                and shutil.which("newgidmap") is not None)


def plan_for_current_user() -> IdMapPlan:
    """The map for this user; ``HUTCH_IDMAP=single`` forces the single-uid map."""
    uid, gid = os.getuid(), os.getgid()
    if os.environ.get("HUTCH_IDMAP") == "single":
        return IdMapPlan(uid, gid, None, None)
    return IdMapPlan(uid, gid, subid_range("/etc/subuid", uid), subid_range("/etc/subgid", uid))


def apply_full_map(pid: int, plan: IdMapPlan) -> None:
    """Map ``pid``'s namespace with newuidmap/newgidmap (run from the parent namespace)."""
    assert plan.subuid is not None and plan.subgid is not None
    for tool, own, sub in (("newuidmap", plan.uid, plan.subuid),
                           ("newgidmap", plan.gid, plan.subgid)):
        subprocess.run(
            [tool, str(pid), "0", str(own), "1", "1", str(sub.start), str(sub.count)],
            check=True, capture_output=True, text=True,
        )


def apply_single_map(plan: IdMapPlan) -> None:
    """Map only the caller's own ids (run by the process inside the new namespace)."""
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"0 {plan.uid} 1")
    Path("/proc/self/gid_map").write_text(f"0 {plan.gid} 1")
