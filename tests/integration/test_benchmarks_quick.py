"""The benchmark command in quick mode, so that it cannot rot (figures are not checked,
only that every scenario ran and was reported)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def test_quick_benchmark_writes_its_reports(engine: dict[str, Any], tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--peers", "hutch,hutch-pool,crun",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "startup.json").read_text())
    for scenario, peers in (("startup", ("hutch", "hutch-pool", "crun")),
                            ("exec", ("hutch", "crun"))):
        for name in peers:
            peer = report["scenarios"][scenario]["peers"][name]
            assert peer["available"], peer["reason"]
            assert len(peer["samples_s"]) == 3 and all(0 < s < 60 for s in peer["samples_s"])
    concurrency = report["concurrency"]
    assert concurrency["n"] == 5
    for name in ("hutch", "hutch, after an exec", "crun", "crun, isolated as hutch"):
        peer = concurrency["peers"][name]
        assert peer["available"], peer.get("reason")
        assert peer["total_s"]["median"] > 0 and peer["pss_per_sandbox_bytes"]["median"] > 0
    for size in ("1 MiB", "256 MiB"):
        assert report["files"]["hutch"][size]["write"]["mb_per_s"] > 0
    assert len(report["images"]) == 3
    markdown = (tmp_path / "startup.md").read_text()
    assert markdown.startswith("# hutch startup benchmark")
    for heading in ("## 5 sandboxes at once", "## Files into and out", "## Images"):
        assert heading in markdown
    for name in ("startup.png", "concurrency.png", "files.md", "images.md"):
        assert (tmp_path / name).stat().st_size > 0
