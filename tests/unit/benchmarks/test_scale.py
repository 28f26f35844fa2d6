"""benchmarks/scale.py: the arithmetic of the figures and the report (the measuring
itself needs an engine: ``python -m benchmarks --quick`` runs it with 50 sandboxes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks import procmem, scale
from benchmarks.scale import MIB
from tests.unit.benchmarks.test_procmem import engine_procs


def test_steps_and_title() -> None:
    assert scale.steps_for(500) == [50, 500]
    assert scale.steps_for(50) == [50]
    assert scale.steps_for(10) == [10]
    assert scale.title([50, 500]) == "The engine with 0, 50 and 500 idle sandboxes"
    assert scale.title([50]) == "The engine with 0 and 50 idle sandboxes"


def _round(daemon0: int, daemon50: int, daemon500: int, start500: float) -> dict[str, Any]:
    def point(n: int, daemon_kib: int) -> dict[str, Any]:
        mine = {f"sb-mine{i}" for i in range(n)}
        return {**procmem.summarize(engine_procs(n, daemon_kib=daemon_kib), 101, 100, mine),
                "machine_used": (4096 + 2 * n) * MIB, "daemon_fds": 40 + 3 * n}
    return {"points": {"0": point(0, daemon0), "50": point(50, daemon50),
                       "500": point(500, daemon500), "after": point(0, daemon500)},
            "start_s": {"50": 1.0, "500": start500}, "teardown_s": {"50": 0.5, "500": 5.0},
            "errors": {}}


def test_aggregate_takes_medians_of_the_growth_per_sandbox() -> None:
    # daemon growth per sandbox at 500: 100, 200 and 300 KiB in three rounds
    rounds = [_round(70_000, 75_000, 70_000 + 100 * 500 // 1, 10.0),
              _round(70_000, 75_000, 70_000 + 200 * 500, 12.0),
              _round(70_000, 75_000, 70_000 + 300 * 500, 30.0)]
    got = scale.aggregate(rounds, [50, 500])
    top = got["steps"]["500"]
    assert top["start_s"] == 12.0 and top["teardown_s"] == 5.0
    assert top["daemon_rss_per_sandbox"] == 200 * 1024
    assert got["steps"]["50"]["daemon_rss_per_sandbox"] == 5_000 * 1024 / 50
    # each sandbox's own processes: init and slirp4netns, 0.5 MiB PSS each
    assert top["own_pss_per_sandbox"] == MIB and top["own_processes_per_sandbox"] == 2
    # all processes: the sandboxes' own and the daemon's growth
    assert top["engine_pss_per_sandbox"] == MIB + 200 * 1024
    assert top["machine_per_sandbox"] == 2 * MIB
    assert got["points"]["500"]["daemon_fds"] == 1540
    assert got["points"]["0"]["reserve_sandboxes"] == 2
    assert got["points"]["0"]["reserve_pss"] == 2 * MIB
    assert got["points"]["after"]["daemon_rss"] == (70_000 + 200 * 500) * 1024
    assert top["failed_rounds"] == 0


def _result(rounds: list[dict[str, Any]], fresh: bool = True) -> dict[str, Any]:
    return {"benchmark": "scale", "started": "2026-12-07T12:00:00+00:00", "sandboxes": 500,
            "steps": [50, 500], "rounds": len(rounds), "fresh_engine": fresh,
            "machine": {"kernel": "6.1", "arch": "x86_64", "cpu_model": "CPU", "cores": 2,
                        "memory": "24000000 kB"},
            "engine": {"version": "0.1.0", "runtime": "crun", "userns_mode": "subuid",
                       "open_files": "1024/20000",
                       "reserve": {"size": 2, "ready": 2, "taken": 0}},
            "target_daemon_bytes_per_sandbox": scale.TARGET_PER_SANDBOX,
            "medians": scale.aggregate(rounds, [50, 500]), "raw": rounds}


def test_the_report(tmp_path: Path) -> None:
    result = _result([_round(70_000, 75_000, 70_000 + 200 * 500, 12.0)])
    paths = scale.write(result, tmp_path)
    assert [p.name for p in paths] == ["scale.json", "scale.md"]
    assert json.loads((tmp_path / "scale.json").read_text())["sandboxes"] == 500
    text = (tmp_path / "scale.md").read_text()
    assert text.startswith("# The engine with 0, 50 and 500 idle sandboxes")
    assert "--sandboxes 50,500 --rounds 1 --fresh-engine" in text
    assert "| 500 | **12.00 s** | 5.00 s | 0 of 1 |" in text
    assert "| 0 | **68.4 MiB** |" in text  # 70,000 KiB
    assert " | 1540 |" in text and "open files (soft/hard) 1024/20000" in text
    assert "| 500 | **0.195 MiB** | 0.195 MiB | 1.195 MiB | 1.000 MiB (2.0) | 2.00 MiB |" \
        in text  # the daemon: 200 KiB per sandbox
    assert "at most 0.5 MiB: **met** (0.195 MiB at 500)" in text
    assert "hold 2.00 MiB PSS in all" in text
    assert "understates" not in text


def test_the_report_says_when_the_target_is_missed_and_what_failed() -> None:
    bad = _round(70_000, 75_000, 70_000 + 600 * 500, 12.0)
    result = _result([bad, _round(70_000, 75_000, 70_000 + 600 * 500, 14.0)], fresh=False)
    assert scale.verdict(result) == "not met"
    text = "\n".join(scale.section(result))
    assert "**not met** (0.586 MiB at 500)" in text
    assert "understates" in text


def test_a_step_where_some_creates_failed_is_measured_with_those_that_ran() -> None:
    partial = _round(70_000, 75_000, 70_000, 0.0)
    point = {**procmem.summarize(engine_procs(126, daemon_kib=70_000 + 126 * 100), 101, 100,
                                 {f"sb-mine{i}" for i in range(126)}),
             "machine_used": 4096 * MIB, "daemon_fds": 400, "started": 126}
    partial["points"]["500"] = point
    del partial["start_s"]["500"]
    partial["errors"]["500"] = {"failed": 374, "started": 126, "seconds": 2.5,
                                "first": "ResourceExhaustedError: all 128 | disk slots"}
    result = _result([partial])
    med = result["medians"]
    assert med["steps"]["500"]["daemon_rss_per_sandbox"] == 100 * 1024  # per sandbox that ran
    assert med["steps"]["500"]["start_s"] is None and med["points"]["500"]["started"] == 126
    assert scale.verdict(result) == "met, with 126 of 500 running"
    text = "\n".join(scale.section(result))
    assert "| 500 | **—** | 5.00 s | 1 of 1: 374 creates failed (126 ran, after 2.50 s), " \
           "first: ResourceExhaustedError: all 128 / disk slots |" in text
    assert "| 500 asked, 126 ran | **80.7 MiB** |" in text
    assert "| 500 asked, 126 ran | **0.098 MiB** |" in text
    assert "**met, with 126 of 500 running** (0.098 MiB at 500)" in text
