"""A sandbox that sets no limit is still bounded: its own memory limit and CPU quota.

Found by the red team (issue 15, item 11): a default sandbox held 4 GiB with nothing but
the host's OOM killer (or the cgroup all of the user's sandboxes share) to stop it.  Here
the attack runs again in sandboxes that set nothing, on an engine whose defaults are made
small (``HUTCH_DEFAULT_MEMORY_MIB``, ``HUTCH_DEFAULT_CPU``) so that going past them costs
the host little: the hog must be OOM-killed inside its own cgroup, the engine and another
sandbox must go on answering, and what a sandbox asks for explicitly must still win.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hutch
from hutch.engine.lifecycle import sandboxlimits
from hutch.sdk.transport import request_blocking
from tests.helpers import SPIN, cgroup_file, engine_dirs, hutch_cli, stop_engine, user_cgroups

USER_CGROUPS, pytestmark = user_cgroups()

#: The small defaults of the engine these tests restart (MiB, cores).
SMALL_MIB, SMALL_CPU = 256, 0.5
#: Grows by 8 MiB at a time up to ``mib``, then says so: past any default here, yet a
#: bounded cost to the host where nothing stops it (as on an engine without defaults).
GROW = """
chunks = []
for _ in range({mib} // 8):
    chunks.append(bytearray(8 << 20))
print('survived', len(chunks) * 8, flush=True)
"""


def _cgroup_file(sb: hutch.Sandbox, controller: str, name: str) -> str:
    return cgroup_file(USER_CGROUPS, sb.object_id, controller, name)


def _memory_files() -> tuple[str, str]:
    if USER_CGROUPS.version == 1:
        return "memory.limit_in_bytes", "memory.memsw.limit_in_bytes"
    return "memory.max", "memory.swap.max"


def _quota(sb: hutch.Sandbox) -> float:
    if USER_CGROUPS.version == 1:
        return int(_cgroup_file(sb, "cpu", "cpu.cfs_quota_us")) / 100_000
    quota, period = _cgroup_file(sb, "cpu", "cpu.max").split()
    return -1.0 if quota == "max" else int(quota) / int(period)


def _answers_quickly(other: hutch.Sandbox) -> None:
    """The engine answers a health request, and ``other`` an exec, each within a second."""
    start = time.monotonic()
    request_blocking("GET", "/v1/health")
    assert time.monotonic() - start < 1.0
    start = time.monotonic()
    p = other.exec("echo", "ok")
    assert p.stdout.read() == "ok\n" and p.wait() == 0
    assert time.monotonic() - start < 1.0


@pytest.fixture
def small_defaults(engine: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The session's engine, restarted with small default limits for one test."""
    stop_engine()
    with engine_dirs(Path(os.environ["HUTCH_RUNTIME_DIR"]), Path(os.environ["HUTCH_DATA_DIR"]),
                     HUTCH_DEFAULT_MEMORY_MIB=str(SMALL_MIB), HUTCH_DEFAULT_CPU=str(SMALL_CPU)):
        try:
            yield request_blocking("GET", "/v1/engine")
        finally:
            stop_engine()


def test_a_default_sandbox_gets_the_engines_defaults(engine: dict[str, Any]) -> None:
    info = request_blocking("GET", "/v1/engine")
    expected = sandboxlimits.defaults(USER_CGROUPS)
    assert info["default_limits"] == {"memory_mib": expected.memory_mib,
                                      "cpu": expected.cpu, "pids": 2048}
    bound = sandboxlimits.sandboxes_bound_mib(USER_CGROUPS.bases["memory"],
                                              USER_CGROUPS.version)
    # one sandbox can hold only part of what all of them may hold together, and leaves
    # CPUs to the others (all of them only on a host with one)
    assert expected.memory_mib is not None and expected.cpu is not None
    assert expected.memory_mib < (bound or sandboxlimits.host_memory_mib())
    assert expected.cpu < sandboxlimits.host_cpus() or expected.cpu == 1.0
    sb = hutch.Sandbox.create(timeout=60)
    try:
        limit, swap = _memory_files()
        assert _cgroup_file(sb, "memory", limit) == str(expected.memory_mib << 20)
        if (USER_CGROUPS.bases["memory"] / swap).exists():
            assert _cgroup_file(sb, "memory", swap) == \
                (str(expected.memory_mib << 20) if USER_CGROUPS.version == 1 else "0")
        assert _quota(sb) == expected.cpu
    finally:
        sb.terminate()
    doctor = hutch_cli("doctor").stdout.decode()
    line = next(x for x in doctor.splitlines() if "limit: sandbox default" in x)
    assert f"memory {expected.memory_mib} MiB" in line and f"cpu {expected.cpu:g} core" \
        in line, line


def test_a_default_sandbox_is_oom_killed_inside_its_own_limit(
        small_defaults: dict[str, Any]) -> None:
    other = hutch.Sandbox.create(timeout=120)
    hog = hutch.Sandbox.create(timeout=120)
    try:
        # the attack as an entrypoint: it dies, and says it was its memory limit
        bomb = hutch.Sandbox.create("python3", "-c", GROW.format(mib=4 * SMALL_MIB),
                                    timeout=120)
        bomb.wait()
        assert (bomb.returncode, bomb.exit_reason) == (137, "oom"), bomb.stdout.read()
        assert bomb.exit_detail is not None and f"{SMALL_MIB} MiB" in bomb.exit_detail
        # ... and as an exec: that process dies, its sandbox carries on
        p = hog.exec("python3", "-c", GROW.format(mib=4 * SMALL_MIB))
        assert p.wait() == 137, p.stdout.read()
        assert hog.poll() is None
        assert hog.exec("echo", "still here").stdout.read() == "still here\n"
        # the engine and a sandbox beside it went on working, within their own limits
        _answers_quickly(other)
        p = other.exec("python3", "-c", GROW.format(mib=SMALL_MIB // 2))
        assert p.wait() == 0 and p.stdout.read() == f"survived {SMALL_MIB // 2}\n"
    finally:
        hog.terminate()
        other.terminate()


def test_an_explicit_memory_wins_over_the_default(small_defaults: dict[str, Any]) -> None:
    limit, _ = _memory_files()
    bigger = hutch.Sandbox.create(memory=(64, 4 * SMALL_MIB), timeout=60)
    requested = hutch.Sandbox.create(memory=3 * SMALL_MIB, timeout=60)
    smaller = hutch.Sandbox.create(memory=(16, 64), timeout=60)
    try:
        assert _cgroup_file(bigger, "memory", limit) == str(4 * SMALL_MIB << 20)
        assert _cgroup_file(requested, "memory", limit) == str(3 * SMALL_MIB << 20)
        assert _cgroup_file(smaller, "memory", limit) == str(64 << 20)
        p = bigger.exec("python3", "-c", GROW.format(mib=2 * SMALL_MIB))
        assert p.wait() == 0 and p.stdout.read() == f"survived {2 * SMALL_MIB}\n"
        p = smaller.exec("python3", "-c", GROW.format(mib=128))
        assert p.wait() == 137
    finally:
        for sb in (bigger, requested, smaller):
            sb.terminate()


def test_a_default_sandbox_gets_a_cpu_quota(small_defaults: dict[str, Any]) -> None:
    default = hutch.Sandbox.create(timeout=60)
    explicit = hutch.Sandbox.create(cpu=(0.25, 1.0), timeout=60)
    try:
        assert _quota(default) == SMALL_CPU
        assert _quota(explicit) == 1.0
        spin = default.exec("python3", "-c", SPIN)
        share = float(spin.stdout.read())
        assert spin.wait() == 0
        assert share < SMALL_CPU + 0.15, share
    finally:
        default.terminate()
        explicit.terminate()
