"""benchmarks.integrations: its report, and a driver for every framework it names."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import integrations


def test_the_report_shows_first_and_later_and_skips(tmp_path: Path) -> None:
    results = {
        "inspect_ai": {"first_ms": 52.04, "later_median_ms": 43.2, "later_min_ms": 39.0,
                       "later_max_ms": 46.1, "runs": 7},
        "mcp": {"skipped": "the package index is unreachable"},
    }
    integrations.write(results, tmp_path)
    table = (tmp_path / "integrations.md").read_text()
    assert "| inspect_ai | 52.0 ms | **43.2 ms** | 39.0 ms | 46.1 ms | 7 |" in table
    assert "| mcp | skipped: the package index is unreachable |" in table
    assert json.loads((tmp_path / "integrations.json").read_text()) == results


def test_every_driver_reports_what_it_timed() -> None:
    for name, (venv, packages, body) in integrations.DRIVERS.items():
        program = integrations._PRELUDE + body + integrations._REPORT
        compile(program, name, "exec")  # a driver that does not parse fails here, not in CI
        assert venv and packages and "times.append(" in body, name
