"""benchmarks/execrate.py: its report (the measuring runs against a real engine)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import execrate


def test_the_report_says_each_rate_against_the_target(tmp_path: Path) -> None:
    results = {"target_per_s": 1000.0, "rounds": 3, "execs": 2000,
               "one_client": {"1": {"median_per_s": 650.4, "rates": [650.4]},
                              "4": {"median_per_s": 1012.0, "rates": [1012.0]}},
               "clients": {"clients": 10, "median_per_s": 880.0, "rates": [880.0]},
               "round_trip_ms": 1.49}
    execrate.write(results, tmp_path)
    assert json.loads((tmp_path / "execrate.json").read_text()) == results
    text = (tmp_path / "execrate.md").read_text()
    assert "| 1 (asyncio) | 1 | 1 | **650/s** | not met |" in text
    assert "| 1 (asyncio) | 1 | 4 | **1012/s** | met |" in text
    assert "| 10 (processes, blocking) | 10 | 10 | **880/s** | not met |" in text
    assert "**1.49 ms**" in text
