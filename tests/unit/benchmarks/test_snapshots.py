"""benchmarks/snapshots.py: its report (the measuring itself runs against a real engine:
tests/integration/test_snapshots.py runs it quickly)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import snapshots


def test_the_report_lists_every_figure(tmp_path: Path) -> None:
    figure = {"median_ms": 600.0, "min_ms": 550.0, "max_ms": 700.0, "runs": 5}
    figures = {"snapshot_filesystem of a sandbox that wrote 100 MiB": figure,
               "create from the snapshot, again": figure}
    snapshots.write(figures, tmp_path)
    assert json.loads((tmp_path / "snapshots.json").read_text()) == figures
    text = (tmp_path / "snapshots.md").read_text()
    assert text.startswith("# Filesystem snapshots")
    assert "| snapshot_filesystem of a sandbox that wrote 100 MiB | **600.0 ms** |" in text
