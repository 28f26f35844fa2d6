"""The limits a sandbox gets when it asks for none: memory, CPU and pids.

Why: without them the host was a default sandbox's only bound (a red-team sandbox held
4 GiB with only the host's OOM killer to stop it; one spinning on every core took them from
the engine).  A local engine shares its host with its user, so, unlike Modal, podman and
docker, every sandbox gets a hard memory limit (a quarter of what all of the user's
sandboxes may hold together, at least 1 GiB where that allows: 4,519 MiB on the 24 GiB CI
host), a CPU quota (half the engine's CPUs, at least one) and 2048 pids.
``HUTCH_DEFAULT_MEMORY_MIB`` and ``HUTCH_DEFAULT_CPU`` replace the first two (``0``: none);
what a sandbox asks for wins, and a controller that is not delegated gets no default.
Details: docs/limits.md, "resources".
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import resource
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from hutch.api.models import DEFAULT_PIDS_LIMIT, MAX_PIDS_LIMIT
from hutch.engine.errors import Exhausted
from hutch.engine.isolation.cgroups import CgroupHost, Limits

MEMORY_ENV = "HUTCH_DEFAULT_MEMORY_MIB"
CPU_ENV = "HUTCH_DEFAULT_CPU"
#: The share of the host's memory all sandboxes get where no cgroup bounds them
#: (``HUTCH_SANDBOXES_MEMORY_PERCENT`` of tools/setup-host.sh defaults to the same).
SANDBOXES_MEMORY_PERCENT = 75
#: A default sandbox may hold this share of what all sandboxes may hold together.
MEMORY_SHARE = 4
#: ... but at least this much (MiB) where the shared bound allows: a pip install of a
#: large wheel or a test suite needs several hundred MiB.
MEMORY_FLOOR_MIB = 1024
#: The bounds the API puts on explicit limits (MiB, cores; a CFS quota of 1 ms per 100 ms).
MIN_MEMORY_MIB, MAX_MEMORY_MIB = 6, 1 << 24
MIN_CPU, MAX_CPU = 0.01, 4096.0
#: What cgroup v1 shows for "no limit" (the largest page-aligned value, near 2**63).
_V1_UNLIMITED = 1 << 62


@dataclass(frozen=True)
class SandboxDefaults:
    """The limits of a sandbox that sets none (None: no default), and why each."""

    memory_mib: int | None
    cpu: float | None
    pids: int | None = DEFAULT_PIDS_LIMIT
    #: how each was chosen, in words (the engine's log, ``hutch doctor``)
    memory_why: str = ""
    cpu_why: str = ""
    #: settings that were refused (and so ignored), in words
    problems: tuple[str, ...] = ()

    def apply(self, limits: Limits, *, disk_mib: int | None = None,
              controllers: Collection[str]) -> Limits:
        """``limits`` (what a sandbox asked for) with these defaults filled in, for the
        ``controllers`` this host can enforce."""
        memory, cpu, pids = limits.memory_limit, limits.cpu_limit, limits.pids
        if "memory" in controllers and memory is None and self.memory_mib is not None:
            memory = max(self.memory_mib, limits.memory or 0) + (disk_mib or 0)
        if "cpu" in controllers and cpu is None and self.cpu is not None:
            cpu = max(self.cpu, limits.cpu or 0.0)
        if "pids" in controllers and pids is None and self.pids is not None:
            pids = min(self.pids, MAX_PIDS_LIMIT)
        return dataclasses.replace(limits, memory_limit=memory, cpu_limit=cpu, pids=pids)


def defaults(host: CgroupHost, env: Mapping[str, str] | None = None, *,
             mem_total_mib: int | None = None, cpus: int | None = None) -> SandboxDefaults:
    """The defaults of an engine on ``host`` started with ``env`` (``os.environ``);
    ``mem_total_mib`` and ``cpus`` stand in for the host's (tests)."""
    env = os.environ if env is None else env
    problems: list[str] = []
    memory, memory_why = _memory_default(host, env, problems, mem_total_mib)
    cpu, cpu_why = _cpu_default(env, problems, cpus)
    return SandboxDefaults(memory, cpu, memory_why=memory_why, cpu_why=cpu_why,
                           problems=tuple(problems))


def _memory_default(host: CgroupHost, env: Mapping[str, str], problems: list[str],
                    mem_total_mib: int | None) -> tuple[int | None, str]:
    setting = _setting(env, MEMORY_ENV, int, MIN_MEMORY_MIB, MAX_MEMORY_MIB, problems)
    if setting == 0:
        return None, f"{MEMORY_ENV}=0"
    if setting is not None:
        return int(setting), MEMORY_ENV
    base = host.bases.get("memory")
    bound = sandboxes_bound_mib(base, host.version) if base is not None else None
    if bound is not None:
        whence = f"a quarter of the {bound} MiB all sandboxes may hold together, {base}"
    else:
        total = mem_total_mib if mem_total_mib is not None else host_memory_mib()
        bound = total * SANDBOXES_MEMORY_PERCENT // 100
        whence = (f"a quarter of {SANDBOXES_MEMORY_PERCENT}% of the host's {total} MiB "
                  "(nothing bounds all sandboxes together)")
    value = max(bound // MEMORY_SHARE, min(MEMORY_FLOOR_MIB, bound))
    return max(MIN_MEMORY_MIB, value), whence


def _cpu_default(env: Mapping[str, str], problems: list[str], cpus: int | None
                 ) -> tuple[float | None, str]:
    setting = _setting(env, CPU_ENV, float, MIN_CPU, MAX_CPU, problems)
    if setting == 0:
        return None, f"{CPU_ENV}=0"
    if setting is not None:
        return float(setting), CPU_ENV
    count = cpus if cpus is not None else host_cpus()
    return max(1.0, count / 2), f"half of the {count} CPUs the engine may use"


def _setting(env: Mapping[str, str], name: str, kind: type[int] | type[float], low: float,
             high: float, problems: list[str]) -> float | None:
    """The number ``env[name]`` holds: 0 (off), within ``low``..``high``, or None (unset,
    or refused with a line in ``problems``)."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = kind(raw)
    except ValueError:
        value = math.nan
    if value == 0:
        return 0
    if not low <= value <= high:  # a NaN fails this too
        problems.append(f"{name}={raw!r} ignored: not 0 (no default) or a "
                        f"{'whole ' if kind is int else ''}number from {low:g} to {high:g}")
        return None
    return value


def sandboxes_bound_mib(base: Path, version: int) -> int | None:
    """The lowest memory limit on ``base`` (the cgroup every sandbox is made under) and its
    ancestors, in MiB: what all of the user's sandboxes may hold together (None: nothing
    bounds them)."""
    name = "memory.limit_in_bytes" if version == 1 else "memory.max"
    lowest = None
    for directory in (base, *base.parents):
        try:
            value = (directory / name).read_text().strip()
        except OSError:
            if directory != base:
                break  # above the cgroup file system's root
            continue
        with contextlib.suppress(ValueError):
            limit = int(value)
            if limit < _V1_UNLIMITED and (lowest is None or limit < lowest):
                lowest = limit
    return None if lowest is None else lowest >> 20


def host_memory_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) >> 10
    raise OSError("no MemTotal in /proc/meminfo")


def host_cpus() -> int:
    return len(os.sched_getaffinity(0)) or os.cpu_count() or 1


#: The engine's soft limit of open files, at most (its hard limit where lower): it holds
#: about 3 per sandbox.  It was 1024 while libnftables, waiting with ``select()``, loaded
#: the firewalls in the daemon (a socket numbered past FD_SETSIZE aborted it at about 310
#: sandboxes at once: benchmarks/README.md, "500 at once"); the fork server's children
#: load them now (:mod:`hutch.engine.network.nsconfig`).
DESCRIPTOR_CEILING = 65536
#: ... with room for what one create opens on the way (pipes, FIFOs, namespaces, sockets).
DESCRIPTOR_HEADROOM = 64


def raise_descriptor_limit() -> int:
    """Raise the engine's soft limit of open files to its hard limit (at most
    :data:`DESCRIPTOR_CEILING`), as podman and Go programs do; returns the soft limit.
    Its sandboxes' processes keep the usual 1024 (:func:`ociconfig.sandbox_nofile`)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = DESCRIPTOR_CEILING if hard == resource.RLIM_INFINITY \
        else min(hard, DESCRIPTOR_CEILING)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    return soft


def require_descriptors() -> None:
    """Refuse a new sandbox, with the reason, when the engine is near the descriptors it
    may use (its soft ``RLIMIT_NOFILE``, at most :data:`DESCRIPTOR_CEILING`): running out
    half-way through a create left slirp4netns processes behind; this fails first."""
    probe = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)  # the lowest free number
    os.close(probe)
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    limit = DESCRIPTOR_CEILING if soft == resource.RLIM_INFINITY \
        else min(soft, DESCRIPTOR_CEILING)
    if probe >= limit - DESCRIPTOR_HEADROOM:
        raise Exhausted(f"the engine holds {probe} open files, near its limit of {limit}: "
                        "no more sandboxes at once (each holds about 3); end some first")
