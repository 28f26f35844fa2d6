"""benchmarks/procmem.py: reading /proc's text and sorting the engine's processes."""

from __future__ import annotations

import os

from benchmarks import procmem
from benchmarks.procmem import Proc

MIB = 2**20
ROLLUP = """55d0c0a00000-7ffd1b3f2000 ---p 00000000 00:00 0                          [rollup]
Rss:               76120 kB
Pss:               63612 kB
Pss_Dirty:         60000 kB
Shared_Clean:       9000 kB
"""


def test_rollup_reads_rss_and_pss_in_bytes() -> None:
    assert procmem.rollup(ROLLUP) == (76120 * 1024, 63612 * 1024)
    assert procmem.rollup("") == (0, 0)


def test_stat_parsing_survives_odd_command_names() -> None:
    assert procmem.parse_stat("4321 (python3) S 77 4321 4321 0 -1") == ("python3", 77)
    assert procmem.parse_stat("9 (a) b (c)) R 12 9 9 0") == ("a) b (c)", 12)


def test_the_sandbox_of_a_process() -> None:
    cgroup = "4:memory:/hutch/hutchtest/sb-Rau9WHjF\n0::/\n"
    assert procmem.sandbox_of("sleep", cgroup, "sleep infinity") == "sb-Rau9WHjF"
    slirp = ("slirp4netns --configure --api-socket=/home/u/.cache/hutch/sandboxes/"
             "sb-HCXzukSU/slirp4netns.sock tap0")
    assert procmem.sandbox_of("slirp4netns", "0::/\n", slirp) == "sb-HCXzukSU"
    # only slirp4netns is known by its command line; the daemon serves every sandbox
    assert procmem.sandbox_of("python3", "0::/user.slice\n", "x sb-HCXzukSU") is None


def test_descendants_of_the_pause_process() -> None:
    parents = {1: 0, 10: 1, 11: 10, 12: 11, 13: 10, 14: 12, 20: 1}
    assert sorted(procmem.descendants(parents, 10)) == [10, 11, 12, 13, 14]
    assert procmem.descendants(parents, 99) == [99]


def engine_procs(sandboxes: int, reserve: int = 2, daemon_kib: int = 70_000) -> list[Proc]:
    """An engine: pause 100, daemon 101, fork server 102; per sandbox an init and a
    slirp4netns of 0.5 MiB PSS each; ``sb-mine<i>`` ours, ``sb-resv<i>`` the reserve's."""
    procs = [Proc(100, 1, "python", 15 * MIB, 9 * MIB),
             Proc(101, 100, "python", daemon_kib * 1024, daemon_kib * 1024 - 10 * MIB),
             Proc(102, 101, "python", 14 * MIB, 8 * MIB)]
    for i in range(sandboxes + reserve):
        sid = f"sb-{'mine' if i < sandboxes else 'resv'}{i}"
        procs += [Proc(1000 + i, 100, "sleep", 2 * MIB, MIB // 2, sid),
                  Proc(5000 + i, 101, "slirp4netns", 3 * MIB, MIB // 2, sid)]
    return procs


def test_summarize_sorts_the_engine_processes() -> None:
    mine = {f"sb-mine{i}" for i in range(3)}
    got = procmem.summarize(engine_procs(3), daemon=101, pause=100, mine=mine)
    assert got["daemon"] == {"rss": 70_000 * 1024, "pss": 70_000 * 1024 - 10 * MIB}
    assert got["pause"] == {"rss": 15 * MIB, "pss": 9 * MIB}
    assert got["sandboxes"]["count"] == 3 and got["sandboxes"]["processes"] == 6
    assert got["sandboxes"]["pss"] == 3 * MIB
    assert got["sandboxes"]["pss_by_process"] == {"sleep": 3 * MIB // 2,
                                                  "slirp4netns": 3 * MIB // 2}
    assert got["other_sandboxes"]["count"] == 2 and got["other_sandboxes"]["pss"] == 2 * MIB
    assert got["helpers"] == {"count": 1, "processes": 1, "rss": 14 * MIB, "pss": 8 * MIB,
                              "pss_by_process": {"python": 8 * MIB}}
    assert got["processes"] == 3 + 10
    assert got["total_pss"] == sum(p.pss for p in engine_procs(3))


def test_open_files_limit() -> None:
    limits = ("Limit                     Soft Limit           Hard Limit           Units\n"
              "Max open files            1024                 20000                files\n")
    assert procmem.open_files_limit(limits) == "1024/20000"
    assert procmem.open_files_limit("") is None


def test_machine_memory_in_use() -> None:
    meminfo = "MemTotal:       24684000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n"
    assert procmem.machine_used(meminfo) == 4_684_000 * 1024


def test_engine_processes_of_this_process() -> None:
    # this test process as the "daemon": its parent is the "pause" process
    pause, procs = procmem.engine_processes(os.getpid())
    assert pause == os.getppid()
    mine = next(p for p in procs if p.pid == os.getpid())
    assert mine.rss > 0 and mine.pss > 0 and mine.sandbox is None
