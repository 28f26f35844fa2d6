"""The limits a sandbox gets when it sets none, and how what it asks for overrides them
(the kernel's side is in tests/security/test_default_limits.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hutch.engine.isolation import cgroups
from hutch.engine.isolation.cgroups import CgroupHost, Limits, SandboxCgroup
from hutch.engine.lifecycle import sandboxlimits
from hutch.engine.lifecycle.sandboxlimits import SandboxDefaults
from hutch.tools.doctor import check_sandbox_defaults

ALL = cgroups.CONTROLLERS
GIB = 1024


def _v1_host(tmp_path: Path, *limits_mib: int | None) -> CgroupHost:
    """A v1 memory hierarchy ``memory/hutch/user`` with ``limits_mib`` from the mount's
    root down (None: the kernel's "unlimited")."""
    directory = tmp_path / "memory"
    for i, limit in enumerate(limits_mib):
        if i:
            directory = directory / ("hutch", "user", "deeper")[i - 1]
        directory.mkdir(parents=True)
        value = (1 << 63) - 4096 if limit is None else limit << 20
        (directory / "memory.limit_in_bytes").write_text(f"{value}\n")
    return CgroupHost(1, {c: directory for c in ALL})


def test_the_default_memory_is_a_quarter_of_the_lowest_bound_above(tmp_path: Path) -> None:
    host = _v1_host(tmp_path, None, 20 * GIB, 18 * GIB)  # setup-host's 75% on the user
    assert sandboxlimits.sandboxes_bound_mib(host.bases["memory"], 1) == 18 * GIB
    found = sandboxlimits.defaults(host, {}, cpus=2)
    assert found.memory_mib == 18 * GIB // 4
    assert "18432 MiB all sandboxes may hold together" in found.memory_why
    assert not found.problems
    # a lower limit further up bounds the sandboxes too
    host = _v1_host(tmp_path / "b", None, 8 * GIB, 18 * GIB)
    assert sandboxlimits.defaults(host, {}, cpus=2).memory_mib == 2 * GIB


def test_without_a_bound_the_default_comes_from_the_hosts_memory(tmp_path: Path) -> None:
    host = _v1_host(tmp_path, None, None)
    found = sandboxlimits.defaults(host, {}, mem_total_mib=24 * GIB, cpus=2)
    assert found.memory_mib == 24 * GIB * 75 // 100 // 4
    assert "nothing bounds all sandboxes" in found.memory_why
    no_memory = CgroupHost(1, {"cpu": tmp_path})
    assert sandboxlimits.defaults(no_memory, {}, mem_total_mib=8 * GIB,
                                  cpus=2).memory_mib == 1536


def test_a_small_bound_keeps_a_floor_of_a_gib_where_it_can(tmp_path: Path) -> None:
    assert sandboxlimits.defaults(_v1_host(tmp_path / "a", 3 * GIB), {},
                                  cpus=2).memory_mib == GIB
    assert sandboxlimits.defaults(_v1_host(tmp_path / "b", 600), {},
                                  cpus=2).memory_mib == 600


def test_the_default_cpu_is_half_the_cpus_and_at_least_one() -> None:
    host = CgroupHost(1, {})
    assert sandboxlimits.defaults(host, {}, mem_total_mib=GIB, cpus=2).cpu == 1.0
    assert sandboxlimits.defaults(host, {}, mem_total_mib=GIB, cpus=1).cpu == 1.0
    assert sandboxlimits.defaults(host, {}, mem_total_mib=GIB, cpus=16).cpu == 8.0
    assert sandboxlimits.host_cpus() >= 1 and sandboxlimits.host_memory_mib() > 0


def test_settings_replace_or_turn_off_the_defaults(tmp_path: Path) -> None:
    host = _v1_host(tmp_path, 16 * GIB)
    found = sandboxlimits.defaults(host, {"HUTCH_DEFAULT_MEMORY_MIB": "256",
                                          "HUTCH_DEFAULT_CPU": "0.5"}, cpus=8)
    assert (found.memory_mib, found.cpu, found.problems) == (256, 0.5, ())
    off = sandboxlimits.defaults(host, {"HUTCH_DEFAULT_MEMORY_MIB": "0",
                                        "HUTCH_DEFAULT_CPU": "0"}, cpus=8)
    assert (off.memory_mib, off.cpu) == (None, None)
    assert off.apply(Limits(), controllers=ALL) == Limits(pids=2048)


@pytest.mark.parametrize(("memory", "cpu"), [("lots", "nan"), ("5", "-1"), ("1.5", "inf"),
                                             (str(1 << 30), "5000")])
def test_a_bad_setting_is_reported_and_ignored(tmp_path: Path, memory: str, cpu: str) -> None:
    host = _v1_host(tmp_path, 16 * GIB)
    found = sandboxlimits.defaults(host, {"HUTCH_DEFAULT_MEMORY_MIB": memory,
                                          "HUTCH_DEFAULT_CPU": cpu}, cpus=4)
    assert (found.memory_mib, found.cpu) == (4 * GIB, 2.0)  # the computed defaults
    assert len(found.problems) == 2
    assert found.problems[0].startswith(f"HUTCH_DEFAULT_MEMORY_MIB={memory!r} ignored")


DEFAULTS = SandboxDefaults(memory_mib=1024, cpu=1.0)


def test_a_sandbox_that_sets_nothing_gets_every_default() -> None:
    assert DEFAULTS.apply(Limits(), controllers=ALL) == \
        Limits(memory_limit=1024, cpu_limit=1.0, pids=2048)


def test_an_explicit_limit_wins_above_or_below_the_default() -> None:
    asked = Limits(cpu=0.1, cpu_limit=0.25, memory=32, memory_limit=64, pids=10)
    assert DEFAULTS.apply(asked, controllers=ALL) == asked
    big = Limits(cpu=2.0, cpu_limit=3.0, memory=512, memory_limit=8192)
    assert DEFAULTS.apply(big, disk_mib=100, controllers=ALL) == \
        Limits(cpu=2.0, cpu_limit=3.0, memory=512, memory_limit=8192, pids=2048)


def test_a_request_above_the_default_raises_the_limit_to_it() -> None:
    assert DEFAULTS.apply(Limits(cpu=3.0, memory=4096), controllers=ALL) == \
        Limits(cpu=3.0, cpu_limit=3.0, memory=4096, memory_limit=4096, pids=2048)
    assert DEFAULTS.apply(Limits(cpu=0.5, memory=128), controllers=ALL) == \
        Limits(cpu=0.5, cpu_limit=1.0, memory=128, memory_limit=1024, pids=2048)


def test_an_ephemeral_disk_adds_to_the_default_memory() -> None:
    assert DEFAULTS.apply(Limits(), disk_mib=500, controllers=ALL).memory_limit == 1524


def test_no_default_where_the_controller_is_not_delegated() -> None:
    assert DEFAULTS.apply(Limits(), controllers={"pids"}) == Limits(pids=2048)
    assert DEFAULTS.apply(Limits(), controllers=()) == Limits()


def test_the_default_memory_limit_bounds_swap_too(tmp_path: Path) -> None:
    v1 = tmp_path / "v1"
    v1.mkdir()
    for name in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.swappiness"):
        (v1 / name).write_text("")
    SandboxCgroup(1, {"memory": v1}).create(DEFAULTS.apply(Limits(), controllers={"memory"}))
    assert {p.name: p.read_text() for p in v1.iterdir()} == {
        "memory.limit_in_bytes": str(1 << 30), "memory.memsw.limit_in_bytes": str(1 << 30),
        "memory.swappiness": "0"}
    v2 = tmp_path / "v2"
    v2.mkdir()
    for name in ("memory.max", "memory.swap.max"):
        (v2 / name).write_text("")
    SandboxCgroup(2, {"memory": v2}).create(DEFAULTS.apply(Limits(), controllers={"memory"}))
    assert {p.name: p.read_text() for p in v2.iterdir()} == {
        "memory.max": str(1 << 30), "memory.swap.max": "0"}


def test_doctor_shows_the_defaults_and_bad_settings(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    host = _v1_host(tmp_path, 16 * GIB)
    monkeypatch.setenv("HUTCH_DEFAULT_MEMORY_MIB", "300")
    monkeypatch.setenv("HUTCH_DEFAULT_CPU", "0.5")
    check = check_sandbox_defaults(host)
    assert check.status == "ok"
    assert check.detail == ("a sandbox that sets no limit gets memory 300 MiB "
                            "(HUTCH_DEFAULT_MEMORY_MIB), cpu 0.5 cores (HUTCH_DEFAULT_CPU)")
    monkeypatch.setenv("HUTCH_DEFAULT_CPU", "0")
    check = check_sandbox_defaults(host)
    assert check.status == "warn" and "cpu unlimited (HUTCH_DEFAULT_CPU=0)" in check.detail
    monkeypatch.setenv("HUTCH_DEFAULT_MEMORY_MIB", "a lot")
    check = check_sandbox_defaults(host)
    assert check.status == "warn" and "'a lot' ignored" in check.detail
    assert "memory 4096 MiB (a quarter of" in check.detail
    undelegated = CgroupHost(1, {"pids": tmp_path}, problem="run tools/setup-host.sh")
    monkeypatch.delenv("HUTCH_DEFAULT_MEMORY_MIB")
    check = check_sandbox_defaults(undelegated)
    assert check.status == "warn" and check.fix == "run tools/setup-host.sh"
    assert "memory unlimited (not delegated)" in check.detail


def test_creates_are_refused_before_the_engine_runs_out_of_descriptors() -> None:
    """With the lowest free descriptor pushed near the ceiling, a create is refused with
    the reason rather than failing half-way (a real soft limit, lowered for the test)."""
    import resource

    from hutch.engine.errors import Exhausted

    sandboxlimits.require_descriptors()  # a test process holds few
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[int] = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        while len(held) < 256:
            try:
                held.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                break
            if held[-1] >= 256 - sandboxlimits.DESCRIPTOR_HEADROOM:
                break
        with pytest.raises(Exhausted, match="open files"):
            sandboxlimits.require_descriptors()
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_engine_raises_its_soft_limit_of_open_files_to_its_hard_one() -> None:
    """Checked in a child (the limit is the process's): from 256 to its hard limit."""
    import subprocess
    import sys

    code = ("import resource; hard = min(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]); "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)); "
            "from hutch.engine.lifecycle import sandboxlimits; "
            "print(sandboxlimits.raise_descriptor_limit(), "
            "*resource.getrlimit(resource.RLIMIT_NOFILE))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert int(out[0]) > 256 and out == [out[2]] * 3
