"""Runtime choice: crun when it works, runc (with the reason shown) when it does not."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import hutch
from hutch.sdk.transport import request_blocking
from tests.helpers import engine_dirs, hutch_cli, stop_engine


def _exercise() -> None:
    sb = hutch.Sandbox.create(timeout=60)
    p = sb.exec("python3", "-c", "print('ok')")
    assert p.stdout.read() == "ok\n" and p.wait() == 0
    sb.terminate()
    assert sb.returncode == 137


def test_crun_is_preferred_here(engine: dict[str, Any]) -> None:
    assert request_blocking("GET", "/v1/engine")["runtime"] == "crun"


def test_crun_agrees_that_a_sandbox_the_engine_started_runs(engine: dict[str, Any]) -> None:
    """The engine starts crun's containers itself (the byte ``crun start`` would write to
    ``exec.fifo``); crun's own view of the container must be the same as after its start."""
    sb = hutch.Sandbox.create("sh", "-c", "echo started; sleep 60", timeout=60)
    try:
        assert next(iter(sb.stdout)) == "started\n"
        root = Path(os.environ["HUTCH_RUNTIME_DIR"]) / "oci-state" / "crun"
        out = subprocess.run(["crun", "--root", str(root), "state", sb.object_id],
                             capture_output=True, text=True, timeout=30, check=True)
        state = json.loads(out.stdout)
        assert (state["status"], state["id"]) == ("running", sb.object_id)
        assert (root / sb.object_id).is_dir() and not (root / sb.object_id / "exec.fifo").exists()
    finally:
        sb.terminate()


def test_broken_crun_falls_back_to_runc_with_the_reason(engine: dict[str, Any]) -> None:
    stop_engine()
    with engine_dirs(os.environ["HUTCH_RUNTIME_DIR"], os.environ["HUTCH_DATA_DIR"],
                     HUTCH_CRUN_PATH="/bin/false"):
        try:
            info = request_blocking("GET", "/v1/engine")
            assert info["runtime"] == "runc"
            assert "crun failed" in info["runtime_fallback_reason"]
            doctor = hutch_cli("doctor").stdout.decode()
            assert "[WARN] runtime: runc: crun failed" in doctor
            _exercise()
        finally:
            stop_engine()


def test_a_wedged_crun_falls_back_to_runc_in_bounded_time(engine: dict[str, Any],
                                                          tmp_path: Path) -> None:
    wedged = tmp_path / "crun-wedged"
    wedged.write_text('#!/bin/sh\ncase " $* " in *" create "*) exec sleep 600;; esac\n'
                      'exec crun "$@"\n')
    wedged.chmod(0o755)
    stop_engine()
    with engine_dirs(os.environ["HUTCH_RUNTIME_DIR"], os.environ["HUTCH_DATA_DIR"],
                     HUTCH_CRUN_PATH=str(wedged), HUTCH_RUNTIME_PROBE_TIMEOUT="2"):
        try:
            info = request_blocking("GET", "/v1/engine")
            assert info["runtime"] == "runc"
            assert "did not start a container within 2 s" in info["runtime_fallback_reason"]
        finally:
            stop_engine()


def test_runc_can_be_forced(engine: dict[str, Any]) -> None:
    """Also with an ordinary user's PATH, which lacks /usr/sbin (runc's and nft's home)."""
    stop_engine()
    with engine_dirs(os.environ["HUTCH_RUNTIME_DIR"], os.environ["HUTCH_DATA_DIR"],
                     HUTCH_RUNTIME="runc", PATH="/usr/local/bin:/usr/bin:/bin"):
        try:
            assert request_blocking("GET", "/v1/engine")["runtime"] == "runc"
            _exercise()
        finally:
            stop_engine()
    assert request_blocking("GET", "/v1/engine")["runtime"] == "crun"
