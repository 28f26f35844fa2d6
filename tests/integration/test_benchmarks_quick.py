"""The benchmark command in quick mode, so that it cannot rot (figures are not checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def test_quick_benchmark_writes_its_reports(engine: dict[str, Any], tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--peers", "hutch,crun",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "startup.json").read_text())
    for scenario in ("startup", "exec"):
        hutch = report["scenarios"][scenario]["peers"]["hutch"]
        assert hutch["available"], hutch["reason"]
        assert len(hutch["samples_s"]) == 3 and all(0 < s < 60 for s in hutch["samples_s"])
    assert (tmp_path / "startup.md").read_text().startswith("# hutch startup benchmark")


def test_image_benchmark_writes_its_reports(engine: dict[str, Any], tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.images", "--cold-runs", "1", "--runs", "2",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "images.json").read_text())
    assert len(report) == 3
    assert all(0 < figure["median_ms"] < 600_000 for figure in report.values())
    assert "| cache-hit build" in (tmp_path / "images.md").read_text()


def test_file_benchmark_writes_its_reports(engine: dict[str, Any], tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.files", "--runs", "1", "--large-runs", "1",
         "--no-peers", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "files.json").read_text())
    for size in ("1 MiB", "256 MiB"):
        figures = report["hutch"][size]
        assert figures["write"]["mb_per_s"] > 0 and figures["read"]["mb_per_s"] > 0
    assert "| hutch | 256 MiB |" in (tmp_path / "files.md").read_text()
