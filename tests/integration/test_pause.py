"""The pause process: the engine's user namespace, its id map, and its fallback."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import hutch
from hutch.engine.kernel.userns import subid_range
from hutch.sdk.transport import request_blocking
from tests.helpers import engine_dirs, hutch_cli, stop_engine


def test_subuid_range_is_mapped(engine: dict[str, Any]) -> None:
    rng = subid_range("/etc/subuid", os.getuid())
    assert rng is not None
    assert engine["userns_mode"] == "subuid"
    pause = int((Path(os.environ["HUTCH_RUNTIME_DIR"]) / "pause.pid").read_text())
    engine_map = Path(f"/proc/{pause}/uid_map").read_text().split()
    assert engine_map == ["0", str(os.getuid()), "1", "1", str(rng.start), str(rng.count)]
    # each sandbox maps a slice of those ids (tests/security/test_own_ids.py), and its
    # nobody apart
    sb = hutch.Sandbox.create(timeout=60)
    uid_map = sb.exec("cat", "/proc/self/uid_map").stdout.read().split()
    sb.terminate()
    assert uid_map[0] == "0" and int(uid_map[1]) >= 2048 and uid_map[3] == "65534"


def test_single_uid_fallback_warns_and_still_runs(engine: dict[str, Any]) -> None:
    stop_engine()
    runtime = Path(os.environ["HUTCH_RUNTIME_DIR"])
    with engine_dirs(runtime, Path(os.environ["HUTCH_DATA_DIR"]), HUTCH_IDMAP="single"):
        try:
            assert request_blocking("GET", "/v1/engine")["userns_mode"] == "single"
            assert "mapping a single uid" in (runtime / "engine.log").read_text()
            assert "[WARN] engine user namespace: single" in hutch_cli("doctor").stdout.decode()
            sb = hutch.Sandbox.create(timeout=60)
            p = sb.exec("sh", "-c", "cat /proc/self/uid_map; python3 -c 'print(42)'")
            lines = p.stdout.read().splitlines()
            assert p.wait() == 0
            assert lines[0].split() == ["0", str(os.getuid()), "1"]
            assert lines[-1] == "42"
            sb.terminate()
        finally:
            stop_engine()
