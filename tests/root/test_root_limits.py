"""Limits when the engine runs as root: it makes its cgroups itself (no delegation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hutch
from hutch.engine.isolation import cgroups

ROOT_CGROUPS = cgroups.detect("root", root=True, probe=True)


def test_root_enforces_every_limit(root_engine: dict[str, Any]) -> None:
    assert set(ROOT_CGROUPS.bases) == set(cgroups.CONTROLLERS), ROOT_CGROUPS.problem
    sb = hutch.Sandbox.create(memory=(32, 64), cpu=(0.5, 0.5), pids_limit=100,
                              ephemeral_disk=10, timeout=60)
    try:
        def setting(controller: str, name: str) -> str:
            return (Path(ROOT_CGROUPS.bases[controller]) / sb.object_id / name).read_text()

        assert setting("memory", "memory.limit_in_bytes").strip() == str(64 << 20)
        assert setting("cpu", "cpu.cfs_quota_us").strip() == "50000"
        assert setting("pids", "pids.max").strip() == "100"
        p = sb.exec("sh", "-c", "dd if=/dev/zero of=/fill bs=1M count=20")
        assert p.wait() != 0 and "No space left" in p.stderr.read()
        p = sb.exec("python3", "-c", "bytearray(200 << 20)")
        assert p.wait() == 137
    finally:
        sb.terminate(wait=True)
    assert sb.exit_detail is not None and "64 MiB" in sb.exit_detail
    assert not (Path(ROOT_CGROUPS.bases["memory"]) / sb.object_id).exists()
