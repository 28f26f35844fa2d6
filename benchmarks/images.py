"""``python -m benchmarks.images``: what images cost to build, to find cached, and to start.

Three figures, medians of several runs against the user's engine:

1. **cold build** of ``Image.debian_slim().pip_install("six")``: the pip step is forced
   (``force_build=True``) so it really runs every time: a build container, pip reaching
   PyPI, the layer committed.  The Debian base itself is built once per machine (30-40 s)
   and is not part of this figure.
2. **cache-hit build**: the same declaration in a new ``Image`` object, built again (one
   request; the engine finds every step's key).
3. **start from the fresh image**: ``Sandbox.create(image=...)`` of ``python3 -c
   'print(1)'`` to its first output line.

Results go to ``benchmarks/results/images.md`` and ``images.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import timed_runs

RESULTS = Path(__file__).parent / "results"


def median_ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median_ms": statistics.median(ordered) * 1000,
            "min_ms": ordered[0] * 1000, "max_ms": ordered[-1] * 1000, "runs": len(ordered)}


def run(cold_runs: int, warm_runs: int) -> dict[str, Any]:
    import hutch

    def image(force: bool = False) -> hutch.Image:
        return hutch.Image.debian_slim().pip_install("six", force_build=force)

    image().build()  # the base and the step exist before anything is timed
    cold = timed_runs(lambda: image(force=True).build(), cold_runs)
    warm = timed_runs(lambda: image().build(), warm_runs)
    built = image().build()

    def start() -> float:
        begin = time.perf_counter()
        sb = hutch.Sandbox.create("python3", "-c", "print(1)", image=built, timeout=60)
        line = next(iter(sb.stdout))
        elapsed = time.perf_counter() - begin
        if line.strip() != "1":
            raise RuntimeError(f"unexpected first line {line!r}")
        sb.wait()
        return elapsed

    started = [start() for _ in range(warm_runs)]
    return {
        "cold build (debian_slim().pip_install('six'), pip step forced)": median_ms(cold),
        "cache-hit build (same declaration, new Image object)": median_ms(warm),
        "create -> first output from the built image": median_ms(started),
    }


def figures_table(results: dict[str, dict[str, float]]) -> list[str]:
    """Markdown rows of named figures as :func:`median_ms` makes them."""
    lines = ["| figure | median | min | max | runs |", "|---|---:|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | **{r['median_ms']:.1f} ms** | {r['min_ms']:.1f} ms | "
                     f"{r['max_ms']:.1f} ms | {r['runs']} |")
    return lines


def write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "images.json").write_text(json.dumps(results, indent=1))
    lines = ["# Image builds", "", "`python -m benchmarks.images`: medians on this machine "
             "(see the module docstring for what each figure covers).", "",
             *figures_table(results)]
    (out / "images.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.images")
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20, help="cache-hit and start runs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = run(args.cold_runs, args.runs)
    write(results, args.out)
    for name, r in results.items():
        print(f"{name}: median {r['median_ms']:.1f} ms ({r['runs']} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
