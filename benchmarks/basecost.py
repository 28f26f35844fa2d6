"""``python -m benchmarks.basecost``: what the default image costs: cold build and size.

``Image.debian_slim()`` is built from nothing by an engine of its own (a new data
directory, so nothing is cached: mmdebstrap fetches every Debian package, pip fetches
pip, wheel and uv), then its size is read from that engine's store: the unpacked layers
(what a sandbox's overlay uses, and what the layer mirror holds in memory while sandboxes
run) and the compressed blobs (what ``hutch image push`` sends).  Debian's mirror and PyPI
are on the network, so the time depends on them: one run is the figure (``--runs`` for
more), and the report says which Python and which Debian suite were built.

Results go to ``benchmarks/results/basecost.md`` and ``basecost.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
BUILD = ("import hutch, json; ref = hutch.Image.debian_slim({version!r}).build().object_id; "
         "print(json.dumps(ref))")


def _du(path: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def _sizes(data: Path, ref: str) -> dict[str, int]:
    from hutch.imagebuild.layout import ImageStore

    store = ImageStore(data)
    layers, _ = store.image_parts(ref)
    return {"layers": len(layers),
            "compressed_bytes": sum(int(desc["size"]) for desc, _ in layers),
            "unpacked_bytes": sum(_du(store.layers / diff_id.split(":", 1)[1])
                                  for _, diff_id in layers)}


def once(version: str) -> dict[str, Any]:
    """Build ``debian_slim(version)`` with a new engine in a new data directory."""
    with tempfile.TemporaryDirectory(prefix="hutch-basecost-") as tmp:
        env = {**os.environ, "HUTCH_DATA_DIR": f"{tmp}/data",
               "HUTCH_RUNTIME_DIR": f"{tmp}/run"}
        begin = time.perf_counter()
        try:
            built = subprocess.run([sys.executable, "-c", BUILD.format(version=version)],
                                   env=env, capture_output=True, text=True, timeout=1800)
            seconds = time.perf_counter() - begin
            if built.returncode != 0:
                raise RuntimeError(f"the build failed: {built.stderr[-2000:]}")
            ref = json.loads(built.stdout.strip().splitlines()[-1])
            return {"seconds": seconds, "ref": ref, **_sizes(Path(tmp) / "data", ref)}
        finally:
            subprocess.run([sys.executable, "-m", "hutch", "engine", "stop"], env=env,
                           capture_output=True, timeout=120)


def run(version: str, runs: int) -> dict[str, Any]:
    results = [once(version) for _ in range(runs)]
    return {"python_version": version, "runs": runs,
            "cold_build_median_s": statistics.median(r["seconds"] for r in results),
            "cold_build_s": [r["seconds"] for r in results], **{
                k: results[-1][k] for k in ("ref", "layers", "compressed_bytes",
                                            "unpacked_bytes")}}


def write(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "basecost.json").write_text(json.dumps(result, indent=2) + "\n")
    mib = 1 << 20
    lines = [
        "# The default image: cold build and size", "",
        f"`python -m benchmarks.basecost`: `Image.debian_slim({result['python_version']!r})`"
        " built by a new engine with nothing cached (mmdebstrap from Debian's mirror, "
        "then pip, wheel and uv from PyPI).", "",
        "| figure | value |", "|---|---:|",
        f"| cold build (median of {result['runs']}) | "
        f"**{result['cold_build_median_s']:.1f} s** |",
        f"| layers | {result['layers']} |",
        f"| unpacked (what sandboxes and the layer mirror use) | "
        f"**{result['unpacked_bytes'] / mib:.0f} MiB** |",
        f"| compressed (what a push sends) | {result['compressed_bytes'] / mib:.0f} MiB |",
        "", f"Image: `{result['ref']}`.",
    ]
    (out / "basecost.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.basecost")
    parser.add_argument("--python", default="3.11")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = run(args.python, args.runs)
    write(result, args.out)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
