"""benchmarks/report.py: startup.md carries the engine-memory and by-image sections."""

from __future__ import annotations

from benchmarks import report
from tests.unit.benchmarks.test_images import _by_image
from tests.unit.benchmarks.test_scale import _result, _round


def test_startup_md_has_the_scale_and_by_image_sections() -> None:
    results = {"started": "2026-12-07T12:00:00+00:00", "runs": 20, "warmup": 1,
               "machine": {"tools": {}}, "scenarios": {}, "notes": [],
               "images": {"cache-hit build": {"median_ms": 1.9, "runs": 20}},
               "images_by_image": _by_image(),
               "scale": _result([_round(70_000, 75_000, 70_000 + 200 * 500, 12.0)])}
    text = report.render_markdown(results)
    images = text.index("## Images")
    by_image = text.index("### Create → first output by image")
    scale = text.index("## The engine with 0, 50 and 500 idle sandboxes")
    assert images < by_image < scale
    assert "| 10 layers: `layered` | 10 |" in text
    assert "### Time until all run" in text and "### The engine's memory" in text
    assert "| 500 | **0.195 MiB** |" in text
    del results["scale"], results["images_by_image"]
    text = report.render_markdown(results)
    assert "by image" not in text and "idle sandboxes" not in text


def test_a_zero_memory_figure_has_no_ratio() -> None:
    def peer(seconds: float, pss: float) -> dict[str, object]:
        return {"available": True,
                "total_s": {"median": seconds, "p10": seconds, "p90": seconds},
                "pss_per_sandbox_bytes": {"median": pss}}
    conc = {"n": 5, "runs": 1, "peers": {"hutch": peer(0.02, 0.0), "crun": peer(0.08, 2**20)}}
    text = "\n".join(report._concurrency_section(conc))
    assert "| crun | **0.08 s** | 0.08 s | 0.08 s | 0.25x (hutch 4.0x faster) | " \
           "**1.00 MiB** | — |" in text
