"""Resource limits through the SDK: memory, cpu, pids and ephemeral_disk hold, are visible in
the sandbox's cgroup, and a sandbox ended by one says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import hutch
from hutch.sdk.transport import request_blocking
from tests.helpers import SPIN, cgroup_file, user_cgroups

USER_CGROUPS, needs = user_cgroups()

ALLOCATE = "x = bytearray({mib} << 20); print('allocated', flush=True)"


def _cgroup_file(sb: hutch.Sandbox, controller: str, name: str) -> str:
    return cgroup_file(USER_CGROUPS, sb.object_id, controller, name)


@needs
def test_an_entrypoint_beyond_its_memory_limit_is_oom_killed_and_says_so(
        engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create("python3", "-c", ALLOCATE.format(mib=400), memory=(64, 128),
                              timeout=60)
    sb.wait()
    assert sb.returncode == 137
    assert sb.exit_reason == "oom"
    assert sb.exit_detail is not None and "memory limit of 128 MiB" in sb.exit_detail


@needs
def test_an_exec_beyond_the_limit_dies_and_the_sandbox_carries_on(
        engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create(memory=(32, 96), timeout=60)
    try:
        assert _cgroup_file(sb, "memory", "memory.limit_in_bytes") == str(96 << 20)
        assert _cgroup_file(sb, "memory", "memory.soft_limit_in_bytes") == str(32 << 20)
        small = sb.exec("python3", "-c", ALLOCATE.format(mib=16))
        assert small.wait() == 0 and small.stdout.read() == "allocated\n"
        big = sb.exec("python3", "-c", ALLOCATE.format(mib=300))
        assert big.wait() == 137
        after = sb.exec("echo", "still here")
        assert after.wait() == 0 and after.stdout.read() == "still here\n"
    finally:
        sb.terminate(wait=True)
    assert sb.exit_reason == "terminated"
    assert sb.exit_detail is not None and "1 of its processes" in sb.exit_detail


@needs
def test_a_cpu_limit_caps_the_share_of_a_core(engine: dict[str, Any]) -> None:
    limited = hutch.Sandbox.create(cpu=(0.25, 0.25), timeout=60)
    free = hutch.Sandbox.create(cpu=1.0, timeout=60)
    try:
        assert _cgroup_file(limited, "cpu", "cpu.cfs_quota_us") == "25000"
        assert _cgroup_file(limited, "cpu", "cpu.cfs_period_us") == "100000"
        assert _cgroup_file(free, "cpu", "cpu.shares") == "1024"
        # a request alone is capped by the engine's default quota, never below the request
        default = engine["default_limits"]["cpu"]
        assert _cgroup_file(free, "cpu", "cpu.cfs_quota_us") == \
            ("-1" if default is None else str(round(max(default, 1.0) * 100_000)))
        capped = limited.exec("python3", "-c", SPIN)
        uncapped = free.exec("python3", "-c", SPIN)
        capped_share = float(capped.stdout.read())
        uncapped_share = float(uncapped.stdout.read())
        assert capped.wait() == 0 and uncapped.wait() == 0
        assert capped_share < 0.4, capped_share
        assert uncapped_share > capped_share + 0.15, (uncapped_share, capped_share)
    finally:
        limited.terminate()
        free.terminate()


@needs
def test_the_pids_limit_holds_and_is_reported(engine: dict[str, Any]) -> None:
    default = hutch.Sandbox.create(timeout=60)
    sb = hutch.Sandbox.create(pids_limit=24, timeout=60)
    try:
        assert _cgroup_file(default, "pids", "pids.max") == "2048"
        assert _cgroup_file(sb, "pids", "pids.max") == "24"
        p = sb.exec("python3", "-c", """
import subprocess
children, refused = [], 0
for _ in range(60):
    try:
        children.append(subprocess.Popen(["sleep", "30"]))
    except BlockingIOError:
        refused += 1
print(len(children), refused)
for c in children:
    c.kill()
""")
        started, refused = map(int, p.stdout.read().split())
        assert p.wait() == 0, p.stderr.read()
        assert started < 24 and refused == 60 - started
    finally:
        default.terminate()
        sb.terminate(wait=True)
    assert sb.exit_detail is not None and "pids limit" in sb.exit_detail


@needs
def test_limits_end_with_the_sandbox(engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create(memory=(16, 64), timeout=60)
    directories = [Path(base) / sb.object_id for base in USER_CGROUPS.bases.values()]
    assert all(d.is_dir() for d in directories)
    sb.terminate(wait=True)
    assert not any(d.exists() for d in directories)


def test_ephemeral_disk_caps_what_the_sandbox_writes(engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create(ephemeral_disk=20, timeout=60)
    try:
        p = sb.exec("sh", "-c", "df -m / | tail -1; dd if=/dev/zero of=/fill bs=1M count=30")
        out, err = p.stdout.read(), p.stderr.read()
        assert p.wait() != 0
        assert out.split()[1] == "20", out
        assert "No space left on device" in err
        p = sb.exec("sh", "-c", "rm /fill && dd if=/dev/zero of=/again bs=1M count=10")
        assert p.wait() == 0, p.stderr.read()
    finally:
        sb.terminate()
    unlimited = hutch.Sandbox.create(timeout=60)
    try:
        p = unlimited.exec("dd", "if=/dev/zero", "of=/fill", "bs=1M", "count=30")
        assert p.wait() == 0, p.stderr.read()
    finally:
        unlimited.terminate()


def test_requests_above_limits_and_bad_values_are_refused(engine: dict[str, Any]) -> None:
    with pytest.raises(hutch.exception.InvalidError, match="lower than request"):
        hutch.Sandbox.create(memory=(256, 128))
    with pytest.raises(hutch.exception.InvalidError, match="positive"):
        hutch.Sandbox.create(ephemeral_disk=-5)


def test_the_engine_raises_its_open_files_limit_and_sandboxes_keep_1024(
        engine: dict[str, Any]) -> None:
    """The daemon holds about 3 descriptors per sandbox, so it raises its soft limit to its
    hard one; a sandbox's processes (its entrypoint, and an exec through its zygote) start
    with the usual 1024 and the engine's hard limit, not the daemon's raised one."""
    pid = request_blocking("GET", "/v1/engine")["pid"]  # (now: earlier tests restart it)
    daemon = Path(f"/proc/{pid}/limits").read_text()
    soft, hard = next(line for line in daemon.splitlines()
                      if line.startswith("Max open files")).split()[3:5]
    assert soft == hard or int(soft) == 65536, daemon
    sb = hutch.Sandbox.create("sh", "-c", "echo $(ulimit -Sn) $(ulimit -Hn); sleep infinity",
                              timeout=60)
    try:
        assert next(iter(sb.stdout)).split() == [str(min(1024, int(hard))), hard]
        proc = sb.exec("sh", "-c", "echo $(ulimit -Sn) $(ulimit -Hn)")
        assert proc.stdout.read().split() == [str(min(1024, int(hard))), hard]
    finally:
        sb.terminate()
