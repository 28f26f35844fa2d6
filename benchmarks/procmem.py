"""The engine's processes as ``/proc`` shows them: for ``benchmarks/scale.py``.

Every process under the engine's pause process (the daemon, its helpers, the sandboxes'
inits and ``slirp4netns``) with its RSS and PSS (``smaps_rollup``) and the sandbox it
serves, sorted into the daemon, the pause process, given sandboxes, other sandboxes (the
reserve's) and the rest; the machine's memory in use; a process's open-files limit.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SANDBOX_ID = re.compile(r"\bsb-[0-9A-Za-z]+")


@dataclass(frozen=True)
class Proc:
    """One process of the engine: bytes of RSS and PSS, and the sandbox it serves."""

    pid: int
    ppid: int
    comm: str
    rss: int
    pss: int
    sandbox: str | None = None


def rollup(text: str) -> tuple[int, int]:
    """(RSS, PSS) in bytes from the text of ``/proc/<pid>/smaps_rollup``."""
    found = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss") and rest.split():
            found[key] = int(rest.split()[0]) * 1024
    return found.get("Rss", 0), found.get("Pss", 0)


def parse_stat(text: str) -> tuple[str, int]:
    """(comm, ppid) from the text of ``/proc/<pid>/stat`` (comm may hold spaces, parens)."""
    comm = text[text.index("(") + 1:text.rindex(")")]
    return comm, int(text[text.rindex(")") + 2:].split()[1])


def sandbox_of(comm: str, cgroup: str, cmdline: str) -> str | None:
    """The sandbox id a process serves: from its cgroup (an init, a zygote), or from the
    API socket path on ``slirp4netns``'s command line."""
    found = SANDBOX_ID.search(cgroup)
    if found is None and comm == "slirp4netns":
        found = SANDBOX_ID.search(cmdline)
    return found.group(0) if found else None


def _parents() -> dict[int, int]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError):
                out[int(entry)] = parse_stat(Path(f"/proc/{entry}/stat").read_text())[1]
    return out


def descendants(parents: dict[int, int], root: int) -> list[int]:
    """``root`` and every process below it, from a pid -> ppid map."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _read(pid: int) -> Proc | None:
    base = Path(f"/proc/{pid}")
    try:
        comm, ppid = parse_stat((base / "stat").read_text())
        rss, pss = rollup((base / "smaps_rollup").read_text())
        cgroup = (base / "cgroup").read_text()
        cmdline = (base / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError):
        return None  # ended meanwhile
    return Proc(pid, ppid, comm, rss, pss, sandbox_of(comm, cgroup, cmdline))


def engine_processes(daemon: int) -> tuple[int, list[Proc]]:
    """The pause process's pid and every process under it (itself included)."""
    parents = _parents()
    pause = parents.get(daemon)
    if pause is None:
        raise RuntimeError(f"the engine's daemon (pid {daemon}) is not running")
    procs = [p for p in map(_read, descendants(parents, pause)) if p is not None]
    return pause, procs


def _group(procs: Iterable[Proc]) -> dict[str, Any]:
    procs = list(procs)
    by_comm: dict[str, int] = {}
    for p in procs:
        by_comm[p.comm] = by_comm.get(p.comm, 0) + p.pss
    return {"count": len({p.sandbox for p in procs}), "processes": len(procs),
            "rss": sum(p.rss for p in procs), "pss": sum(p.pss for p in procs),
            "pss_by_process": dict(sorted(by_comm.items()))}


def summarize(procs: list[Proc], daemon: int, pause: int, mine: set[str]) -> dict[str, Any]:
    """One measurement: the daemon, the pause process, our sandboxes' processes, other
    sandboxes' (the reserve's), the rest (the engine's helpers), and the totals."""
    def one(pid: int) -> dict[str, int]:
        p = next((p for p in procs if p.pid == pid), None)
        return {"rss": p.rss if p else 0, "pss": p.pss if p else 0}

    ours = [p for p in procs if p.sandbox is not None and p.sandbox in mine]
    others = [p for p in procs if p.sandbox is not None and p.sandbox not in mine]
    helpers = [p for p in procs if p.sandbox is None and p.pid not in (daemon, pause)]
    return {"daemon": one(daemon), "pause": one(pause), "sandboxes": _group(ours),
            "other_sandboxes": _group(others), "helpers": _group(helpers),
            "total_rss": sum(p.rss for p in procs), "total_pss": sum(p.pss for p in procs),
            "processes": len(procs)}


def machine_used(meminfo: str) -> int:
    """``MemTotal - MemAvailable`` in bytes, from the text of ``/proc/meminfo``."""
    kib = {k: int(v.split()[0]) for k, _, v in (line.partition(":")
                                                for line in meminfo.splitlines()) if v.split()}
    return (kib["MemTotal"] - kib["MemAvailable"]) * 1024


def open_files_limit(limits: str) -> str | None:
    """``soft/hard`` from the text of ``/proc/<pid>/limits``."""
    line = next((x for x in limits.splitlines() if x.startswith("Max open files")), "")
    return "/".join(line.split()[3:5]) or None
