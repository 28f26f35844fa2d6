"""Per-sandbox cgroups: the cpu, memory and pids limits a sandbox cannot lift.

Why the engine manages them itself, the same way under every OCI runtime: it makes one
cgroup per sandbox where the host delegates them (:func:`detect`: a v1 subtree per
controller made by ``tools/setup-host.sh``, or its own delegated v2 cgroup), writes the
limits (a memory limit holds swap too), and moves the sandbox's init in between the
runtime's ``create`` and ``start``; execs start from a zygote that joined first, so nothing
the sandbox forks is ever outside.  The cgroup files belong to the engine's user namespace
and are not mounted in the sandbox, so it cannot move out or raise a limit.  A limit the
host cannot enforce is refused with the fix (:class:`LimitUnavailable`).
Details: docs/design.md, "Limits and warm pools"; docs/limits.md, "resources".
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

from hutch.engine.errors import Invalid

CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "cpu", "pids")
CFS_PERIOD_US = 100_000
#: Settings some kernels lack (swap accounting), which then have nothing to limit.
_OPTIONAL = {"memory.memsw.limit_in_bytes", "memory.swap.max", "memory.swappiness"}


class LimitUnavailable(Invalid):
    """A limit was asked for that this host's cgroups cannot enforce."""


@dataclass(frozen=True)
class Limits:
    """What a sandbox asked for, in the units of the API (cores, MiB, processes)."""

    cpu: float | None = None
    cpu_limit: float | None = None
    memory: int | None = None
    memory_limit: int | None = None
    pids: int | None = None

    def controllers(self) -> set[str]:
        needed = set()
        if self.cpu is not None or self.cpu_limit is not None:
            needed.add("cpu")
        if self.memory is not None or self.memory_limit is not None:
            needed.add("memory")
        if self.pids is not None:
            needed.add("pids")
        return needed


@dataclass
class CgroupHost:
    """Where this engine may make sandbox cgroups, controller by controller."""

    version: int  # 1 or 2; 0: no cgroup file system found
    bases: dict[str, Path] = field(default_factory=dict)
    #: why the controllers missing from ``bases`` are unavailable, and how to fix it
    problem: str = ""
    #: the engine runs as root, so the OCI runtime manages cgroups too
    root: bool = False

    def require(self, limits: Limits) -> None:
        missing = sorted(limits.controllers() - set(self.bases))
        if missing:
            raise LimitUnavailable(
                f"this host cannot enforce {', '.join(missing)} limits for this engine: "
                f"{self.problem}")

    def cgroup(self, sandbox_id: str) -> SandboxCgroup:
        """The sandbox's cgroup.  Where the runtime manages cgroups itself (root, or cgroup
        v2) it gets the same path as ``linux.cgroupsPath``, so that its ``exec`` joins
        this cgroup rather than one of its own."""
        paths = {c: base / sandbox_id for c, base in self.bases.items()}
        runtime_path = None
        if self.root or self.version == 2:
            base = next(iter(self.bases.values()), None)
            if base is not None:
                relative = base.relative_to(CGROUP_ROOT)
                if self.version == 1:  # below the controller's own mount point
                    relative = relative.relative_to(relative.parts[0])
                runtime_path = f"/{relative}/{sandbox_id}"
        return SandboxCgroup(self.version, paths, runtime_path)


def _mounts() -> list[tuple[Path, str, set[str]]]:
    """(mount point, fs type, options) of every cgroup file system."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            _, point, fstype, opts, *_ = line.split()
            if fstype in ("cgroup", "cgroup2"):
                found.append((Path(point), fstype, set(opts.split(","))))
    return found


def _writable(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK) and \
        os.access(path / "cgroup.procs", os.W_OK)


def detect(user: str, *, root: bool, probe: bool = False) -> CgroupHost:
    """The cgroup layout this engine can use (``user``: the host user it runs for).

    ``probe`` (``hutch doctor``) only looks: it makes no directory and moves no process.
    """
    mounts = _mounts()
    unified = [m for m in mounts if m[1] == "cgroup2" and m[0] == CGROUP_ROOT]
    if unified:
        return _detect_v2(root=root, probe=probe)
    v1 = {c: point for point, fstype, opts in mounts if fstype == "cgroup"
          for c in CONTROLLERS if c in opts}
    if not v1:
        return CgroupHost(0, problem="no cgroup file system is mounted at /sys/fs/cgroup")
    bases: dict[str, Path] = {}
    for controller, point in v1.items():
        base = point / "hutch" / user
        if root and not probe:
            with contextlib.suppress(OSError):
                base.mkdir(parents=True, exist_ok=True)
        if _writable(base) or (root and probe and os.access(point, os.W_OK)):
            bases[controller] = base
    missing = [c for c in CONTROLLERS if c not in bases]
    problem = ""
    if missing:
        dirs = " ".join(str(v1.get(c, CGROUP_ROOT / c) / "hutch" / user) for c in missing)
        problem = (f"cgroup v1 controllers {', '.join(missing)} are not delegated to {user}; "
                   f"as root: HUTCH_DELEGATE_USERS={user} tools/setup-host.sh, or "
                   f"mkdir -p {dirs} && for d in {dirs}; "
                   f"do chown {user}: $d $d/cgroup.procs $d/tasks; done")
    return CgroupHost(1, bases, problem, root=root)


def _own_v2_cgroup() -> Path:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return CGROUP_ROOT / line[3:].lstrip("/")
    raise OSError(errno.ENOENT, "no cgroup v2 entry in /proc/self/cgroup")


def _detect_v2(*, root: bool, probe: bool) -> CgroupHost:
    try:
        parent = CGROUP_ROOT / "hutch" if root else _own_v2_cgroup()
        if parent.name == "hutch-engine":  # a restarted engine, already in its leaf
            parent = parent.parent
        if root and not probe:
            parent.mkdir(exist_ok=True)
        if root and probe:
            parent = CGROUP_ROOT
        available = set((parent / "cgroup.controllers").read_text().split())
    except OSError as exc:
        return CgroupHost(2, problem=f"cannot read the engine's cgroup: {exc}")
    how = ("start the engine in a delegated cgroup, e.g. `systemd-run --user --scope "
           "-p Delegate=yes hutch engine start`")
    if not _writable(parent):
        return CgroupHost(2, problem=f"the engine's cgroup {parent} is not delegated to it; "
                          + how)
    usable = [c for c in CONTROLLERS if c in available]
    if probe:  # the engine would enable these in its subtree
        missing = [c for c in CONTROLLERS if c not in usable]
        return CgroupHost(2, {c: parent for c in usable}, f"controllers {', '.join(missing)} "
                          f"are not delegated to {parent}; {how}" if missing else "")
    try:
        if not root:
            leaf = parent / "hutch-engine"
            leaf.mkdir(exist_ok=True)
            for pid in (parent / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    (leaf / "cgroup.procs").write_text(pid)
        if usable:
            (parent / "cgroup.subtree_control").write_text(
                " ".join(f"+{c}" for c in usable))
    except OSError as exc:
        return CgroupHost(2, problem=f"cannot set up the engine's cgroup {parent}: {exc}; "
                          + how)
    missing = [c for c in CONTROLLERS if c not in usable]
    problem = f"controllers {', '.join(missing)} are not delegated to {parent}; {how}" \
        if missing else ""
    return CgroupHost(2, {c: parent for c in usable}, problem, root=root)


@dataclass
class SandboxCgroup:
    """One sandbox's cgroup: a directory per controller (v1), or one directory (v2)."""

    version: int
    paths: dict[str, Path]
    #: ``linux.cgroupsPath`` for runtimes that manage cgroups (None: they must not)
    runtime_path: str | None = None

    def dirs(self) -> list[Path]:
        return sorted(set(self.paths.values()))

    def create(self, limits: Limits) -> None:
        for path in self.dirs():
            path.mkdir(exist_ok=True)
        for name, value in self._settings(limits):
            directory = self.paths[name.split(".")[0]]
            if name in _OPTIONAL and not (directory / name).exists():
                continue  # no swap accounting on this kernel: nothing to hold
            try:
                (directory / name).write_text(value)
            except OSError as exc:
                raise LimitUnavailable(f"cannot set {name} = {value} for this sandbox: {exc}") \
                    from exc

    def _settings(self, limits: Limits) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        mib = 1 << 20
        if self.version == 1:
            if limits.memory_limit is not None:
                out.append(("memory.limit_in_bytes", str(limits.memory_limit * mib)))
                out.append(("memory.memsw.limit_in_bytes", str(limits.memory_limit * mib)))
                # Without swap accounting (no memsw file) a sandbox at its limit could push
                # pages to swap and go on growing; swappiness 0 makes the kernel's reclaim at
                # the limit drop file pages only, so the limit holds for anonymous memory.
                out.append(("memory.swappiness", "0"))
            if limits.memory is not None:
                out.append(("memory.soft_limit_in_bytes", str(limits.memory * mib)))
            if limits.cpu is not None:
                out.append(("cpu.shares", str(max(2, round(limits.cpu * 1024)))))
            if limits.cpu_limit is not None:
                out.append(("cpu.cfs_period_us", str(CFS_PERIOD_US)))
                out.append(("cpu.cfs_quota_us",
                            str(max(1000, round(limits.cpu_limit * CFS_PERIOD_US)))))
        else:
            if limits.memory_limit is not None:
                out.append(("memory.max", str(limits.memory_limit * mib)))
                out.append(("memory.swap.max", "0"))
            if limits.memory is not None:
                out.append(("memory.low", str(limits.memory * mib)))
            if limits.cpu is not None:
                out.append(("cpu.weight", str(min(10000, max(1, round(limits.cpu * 100))))))
            if limits.cpu_limit is not None:
                quota = max(1000, round(limits.cpu_limit * CFS_PERIOD_US))
                out.append(("cpu.max", f"{quota} {CFS_PERIOD_US}"))
        if limits.pids is not None:
            out.append(("pids.max", str(limits.pids)))
        return out

    def procs_files(self) -> list[str]:
        return [str(path / "cgroup.procs") for path in self.dirs()]

    def add(self, pid: int) -> None:
        for procs in self.procs_files():
            Path(procs).write_text(str(pid))

    def launcher(self) -> list[str]:
        """An argv prefix that runs the rest of the argv inside this cgroup: a shell that
        writes its own pid into each ``cgroup.procs``, then execs (no fork, so nothing it
        starts is ever outside)."""
        script = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; ' \
            'shift; exec "$@"'
        return ["/bin/sh", "-c", script, "hutch-cgroup-exec", *self.procs_files(), "--"]

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer has killed in this cgroup."""
        path = self.paths.get("memory")
        if path is None:
            return 0
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        return _counter(path / name, "oom_kill")

    def pids_max_hits(self) -> int:
        """How many forks failed because of the pids limit."""
        path = self.paths.get("pids")
        return 0 if path is None else _counter(path / "pids.events", "max")

    def memory_limit_mib(self) -> int | None:
        path = self.paths.get("memory")
        if path is None:
            return None
        name = "memory.limit_in_bytes" if self.version == 1 else "memory.max"
        try:
            value = (path / name).read_text().strip()
        except OSError:
            return None
        if value == "max" or int(value) >= 1 << 60:
            return None
        return int(value) >> 20

    def outcome(self, *, killed: bool) -> tuple[bool, str | None]:
        """After the sandbox ended (``killed``: by SIGKILL): whether the OOM killer ended
        it, and the limits it ran into, in words (None when it hit none)."""
        oom_kills, pids_hits = self.oom_kills(), self.pids_max_hits()
        parts = []
        if oom_kills:
            limit = self.memory_limit_mib()
            what = f"its memory limit of {limit} MiB" if limit else "the memory available"
            whom = "its main process" if killed else f"{oom_kills} of its processes"
            parts.append(f"out of memory: the kernel's OOM killer ended {whom} when it "
                         f"reached {what}")
            if killed and oom_kills > 1:
                parts[-1] += f" ({oom_kills} processes killed in all)"
        if pids_hits:
            parts.append(f"it reached its pids limit: {pids_hits} forks failed")
        return bool(oom_kills) and killed, "; ".join(parts) or None

    def remove(self) -> None:
        """Remove the (empty) cgroup; one that still holds processes stays, and a later
        cleanup of the same sandbox tries again."""
        for path in self.dirs():
            with contextlib.suppress(OSError):
                path.rmdir()


def _memberships(pid: int | str) -> dict[str, str]:
    """``{hierarchy: cgroup path}`` of a process (``/proc/PID/cgroup``); the hierarchy is
    its controllers (``cpu,cpuacct``, ``name=systemd``), or ``""`` for cgroup v2."""
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        out[controllers] = path
    return out


def _hierarchy_key(names: list[str]) -> str:
    return ",".join(sorted(names))


@functools.cache
def _mount_points() -> dict[str, tuple[str, str]]:
    """``{hierarchy: (mount point, mount root)}`` of the cgroup file systems mounted here,
    keyed like :func:`_memberships` (controllers sorted).  Read once: the host mounts them
    before the engine starts, and the engine's mount table grows with every sandbox."""
    controllers = {line.split()[0] for line in Path("/proc/cgroups").read_text().splitlines()
                   if line and not line.startswith("#")}
    out: dict[str, tuple[str, str]] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        names = [o for o in tail[2].split(",") if o in controllers or o.startswith("name=")]
        key = "" if tail[0] == "cgroup2" else _hierarchy_key(names)
        out.setdefault(key, (fields[4], fields[3]))
    return out


def procs_files_to_join(pid: int) -> list[str]:
    """The ``cgroup.procs`` files that put a process where process ``pid`` is, in every
    hierarchy where this process is elsewhere: the sandbox's own cgroups, and as root also
    those a runtime that manages cgroups put it in (hugetlb, freezer, devices, ...)."""
    mine, mounts = _memberships("self"), _mount_points()
    files = []
    for hierarchy, path in _memberships(pid).items():
        found = mounts.get(_hierarchy_key(hierarchy.split(",")) if hierarchy else "")
        if mine.get(hierarchy) == path or found is None:
            continue
        point, root = found
        if root != "/":
            if not (path + "/").startswith(root.rstrip("/") + "/"):
                continue  # outside what is mounted here
            path = path[len(root.rstrip("/")):]
        files.append(f"{point}{path.rstrip('/')}/cgroup.procs")
    return files


def _counter(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0
