"""The engine's cgroup layout and limit settings (the kernel's side is in
tests/integration/test_limits.py and tests/security/test_limits_hold.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hutch.engine.isolation import cgroups
from hutch.engine.isolation.cgroups import CgroupHost, Limits, LimitUnavailable, SandboxCgroup


def test_limits_name_the_controllers_they_need() -> None:
    assert Limits().controllers() == set()
    assert Limits(cpu=0.5).controllers() == {"cpu"}
    assert Limits(memory_limit=64, pids=10).controllers() == {"memory", "pids"}


def test_a_host_without_the_controller_refuses_with_the_fix() -> None:
    host = CgroupHost(1, {"pids": Path("/x")}, problem="run tools/setup-host.sh")
    host.require(Limits(pids=10))
    with pytest.raises(LimitUnavailable, match=r"cannot enforce cpu, memory limits.*setup-host"):
        host.require(Limits(cpu=1.0, memory=10, pids=10))


def test_an_undelegated_user_gets_no_bases_and_a_fix() -> None:
    host = cgroups.detect("hutch-no-such-user", root=False, probe=True)
    assert host.bases == {}
    assert host.problem
    if host.version == 1:
        assert "HUTCH_DELEGATE_USERS=hutch-no-such-user tools/setup-host.sh" in host.problem


def test_v1_settings_and_layout(tmp_path: Path) -> None:
    paths = {c: tmp_path / c / "sb-1" for c in cgroups.CONTROLLERS}
    for path in paths.values():
        path.mkdir(parents=True)
        for name in ("memory.limit_in_bytes", "memory.soft_limit_in_bytes", "cpu.shares",
                     "cpu.cfs_period_us", "cpu.cfs_quota_us", "pids.max"):
            (path / name).write_text("")
    group = SandboxCgroup(1, paths)
    group.create(Limits(cpu=0.5, cpu_limit=1.5, memory=32, memory_limit=64, pids=99))
    assert (paths["memory"] / "memory.limit_in_bytes").read_text() == str(64 << 20)
    assert (paths["memory"] / "memory.soft_limit_in_bytes").read_text() == str(32 << 20)
    assert not (paths["memory"] / "memory.memsw.limit_in_bytes").exists()  # no swap file
    assert (paths["cpu"] / "cpu.shares").read_text() == "512"
    assert (paths["cpu"] / "cpu.cfs_quota_us").read_text() == "150000"
    assert (paths["pids"] / "pids.max").read_text() == "99"
    assert group.memory_limit_mib() == 64
    assert group.launcher()[-1] == "--"
    assert [str(paths[c] / "cgroup.procs") for c in sorted(paths, key=lambda c: paths[c])] \
        == group.launcher()[4:-1]


def test_v2_settings(tmp_path: Path) -> None:
    group = SandboxCgroup(2, {c: tmp_path / "sb-1" for c in cgroups.CONTROLLERS})
    (tmp_path / "sb-1").mkdir()
    for name in ("memory.max", "memory.low", "memory.swap.max", "cpu.weight", "cpu.max",
                 "pids.max"):
        (tmp_path / "sb-1" / name).write_text("")
    group.create(Limits(cpu=2.0, cpu_limit=0.5, memory=10, memory_limit=20, pids=5))
    read = {p.name: p.read_text() for p in (tmp_path / "sb-1").iterdir()}
    assert read == {"memory.max": str(20 << 20), "memory.low": str(10 << 20),
                    "memory.swap.max": "0", "cpu.weight": "200", "cpu.max": "50000 100000",
                    "pids.max": "5"}
    assert len(group.procs_files()) == 1


def test_a_setting_the_kernel_lacks_is_an_error_not_ignored(tmp_path: Path) -> None:
    group = SandboxCgroup(1, {"cpu": tmp_path / "cpu"})
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.shares").mkdir()  # writing it fails, as a missing file would
    with pytest.raises(LimitUnavailable, match=r"cpu\.shares"):
        group.create(Limits(cpu=1.0))


def test_outcome_reads_the_kernels_counters(tmp_path: Path) -> None:
    memory, pids = tmp_path / "memory", tmp_path / "pids"
    memory.mkdir()
    pids.mkdir()
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    (memory / "memory.limit_in_bytes").write_text(str(128 << 20))
    (pids / "pids.events").write_text("max 7\n")
    group = SandboxCgroup(1, {"memory": memory, "pids": pids})
    oom, detail = group.outcome(killed=True)
    assert oom
    assert detail == ("out of memory: the kernel's OOM killer ended its main process when it "
                      "reached its memory limit of 128 MiB (2 processes killed in all); "
                      "it reached its pids limit: 7 forks failed")
    assert group.outcome(killed=False)[0] is False
    (memory / "memory.oom_control").write_text("oom_kill 0\n")
    (pids / "pids.events").write_text("max 0\n")
    assert group.outcome(killed=True) == (False, None)


def test_runtimes_that_manage_cgroups_get_the_same_path() -> None:
    root = cgroups.CGROUP_ROOT
    v1_root = CgroupHost(1, {"memory": root / "memory" / "hutch" / "root",
                             "pids": root / "pids" / "hutch" / "root"}, root=True)
    assert v1_root.cgroup("sb-1").runtime_path == "/hutch/root/sb-1"
    v2_user = CgroupHost(2, {"memory": root / "user.slice" / "u.service"})
    assert v2_user.cgroup("sb-1").runtime_path == "/user.slice/u.service/sb-1"
    assert v2_user.cgroup("sb-1").paths == {"memory": root / "user.slice" / "u.service" / "sb-1"}
    v1_user = CgroupHost(1, {"memory": root / "memory" / "hutch" / "someone"})
    assert v1_user.cgroup("sb-1").runtime_path is None  # rootless v1: runtimes keep out


def test_procs_files_to_join_name_only_the_hierarchies_that_differ() -> None:
    assert cgroups.procs_files_to_join(os.getpid()) == []  # where it already is
    for path in cgroups.procs_files_to_join(1):  # wherever init is, the files exist
        assert path.endswith("/cgroup.procs") and os.path.exists(path), path
