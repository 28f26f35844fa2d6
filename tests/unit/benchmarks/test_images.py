"""benchmarks/images.py: the ratios to the default image and the report (the measuring
itself needs an engine: ``python -m benchmarks --quick`` runs it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks import images


def _outcome(median_s: float | None, reason: str | None = None) -> dict[str, Any]:
    stats = None if median_s is None else {"n": 20, "median": median_s, "p10": median_s * 0.9,
                                           "p90": median_s * 1.2}
    return {"available": stats is not None, "reason": reason, "stats_s": stats}


def test_ratios_to_the_default_image() -> None:
    got = images.ratios_to_default({"default": _outcome(0.040), "10 layers": _outcome(0.042),
                                    "big": _outcome(None, "failed")})
    assert got["default"] == 1.0
    assert abs((got["10 layers"] or 0) - 1.05) < 1e-9
    assert got["big"] is None
    assert images.ratios_to_default({"10 layers": _outcome(0.042)}) == {"10 layers": None}


def _by_image() -> dict[str, Any]:
    facts = {"default": ("Image.debian_slim()", 2, 615), "10 layers": ("layered", 10, 615),
             "+1024 MiB": ("big", 3, 1639)}
    cold = {"default": _outcome(0.040), "10 layers": _outcome(0.043),
            "+1024 MiB": _outcome(0.046)}
    kept = {"default": _outcome(0.012), "10 layers": _outcome(0.0126),
            "+1024 MiB": _outcome(None, "run 1 failed: TrialError")}
    result: dict[str, Any] = {
        "runs": 20, "big_mib": 1024, "reserve_size": 2, "target_ratio": images.TARGET_RATIO,
        "images": {n: {"declared": d, "layers": k, "unpacked_bytes": mib * 2**20,
                       "build_s": 0.01, "first_create_s": 0.05}
                   for n, (d, k, mib) in facts.items()},
        "cold": cold, "reserve": kept}
    result["ratios"] = {m: images.ratios_to_default(result[m]) for m in ("cold", "reserve")}
    return result


def test_the_table_gives_medians_ratios_and_the_verdict() -> None:
    text = "\n".join(images.by_image_table(_by_image()))
    assert ("| 10 layers: `layered` | 10 | 615 MiB | **43.0 ms** (38.7-51.6) | 1.07x | "
            "**12.6 ms** (11.3-15.1) | 1.05x |") in text
    assert "| +1024 MiB: `big` | 3 | 1639 MiB | **46.0 ms** (41.4-55.2) | 1.15x | " \
           "unavailable: run 1 failed: TrialError | — |" in text
    assert "at most 1.10x the default image: 10 layers, reserve emptied: 1.07x (met); " \
           "+1024 MiB, reserve emptied: 1.15x (not met); 10 layers, reserve kept: 1.05x " \
           "(met)." in text


def test_write_keeps_the_builds_and_adds_the_images_section(tmp_path: Path) -> None:
    figures = {"cache-hit build": {"median_ms": 1.9, "min_ms": 1.8, "max_ms": 2.9, "runs": 20}}
    images.write(figures, tmp_path, _by_image())
    data = json.loads((tmp_path / "images.json").read_text())
    assert data["builds"] == figures and data["by_image"]["big_mib"] == 1024
    text = (tmp_path / "images.md").read_text()
    assert "| cache-hit build | **1.9 ms** |" in text
    assert "## Create → first output by image" in text
    assert "the reserve back at 2" in text
    assert "default 50 ms, 10 layers 50 ms, +1024 MiB 50 ms" in text
    images.write(figures, tmp_path)
    assert "by image" not in (tmp_path / "images.md").read_text()
