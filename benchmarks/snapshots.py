"""``python -m benchmarks.snapshots``: filesystem snapshots of a running sandbox, and
sandboxes created from them.

"An agent checkpoints its sandbox before each step and branches from the checkpoint":
each run starts a sandbox from the default image, has it write ``--mib`` MiB of fresh
(random, incompressible) files, and times:

- ``snapshot_filesystem()`` of it (held still, upper directory copied, layer and image
  written);
- ``Sandbox.create(image=snapshot)`` (until the call returns, the sandbox running), the
  first time (its new layer is copied into the engine's in-memory layer cache then, for a
  sandbox with ids of its own) and again;
- ``Sandbox.create()`` from the default image, cached, for comparison.

Medians of ``--runs`` runs; results go to ``benchmarks/results/snapshots.md`` and
``snapshots.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from benchmarks.images import figures_table, median_ms

RESULTS = Path(__file__).parent / "results"


def _timed_create(image: Any) -> float:
    import hutch

    begin = time.perf_counter()
    sb = hutch.Sandbox.create(image=image, timeout=300)
    elapsed = time.perf_counter() - begin
    sb.terminate()
    return elapsed


def run(runs: int, mib: int) -> dict[str, Any]:
    import hutch

    base = hutch.Image.debian_slim()
    base.build()
    _timed_create(base)  # the base's layers are in memory before anything is timed
    snapshot, first, again, cached = [], [], [], []
    for _ in range(runs):
        sb = hutch.Sandbox.create(image=base, timeout=300)
        try:
            p = sb.exec("sh", "-c", f"mkdir /data && for i in $(seq {mib}); do "
                        "head -c 1048576 /dev/urandom > /data/f$i; done")
            if p.wait() != 0:
                raise RuntimeError(f"writing {mib} MiB failed: {p.stderr.read()}")
            begin = time.perf_counter()
            image = sb.snapshot_filesystem()
            snapshot.append(time.perf_counter() - begin)
        finally:
            sb.terminate()
        first.append(_timed_create(image))
        again.append(_timed_create(image))
        cached.append(_timed_create(base))
    return {
        f"snapshot_filesystem of a sandbox that wrote {mib} MiB": median_ms(snapshot),
        "create from the snapshot, first time": median_ms(first),
        "create from the snapshot, again": median_ms(again),
        "create from the cached default image": median_ms(cached),
    }


def write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "snapshots.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Filesystem snapshots", "",
             "`python -m benchmarks.snapshots`: a sandbox writes fresh files, is snapshotted "
             "while it runs, and sandboxes are created from the snapshot; medians on this "
             "machine (the module docstring says what each covers).", "",
             *figures_table(results)]
    (out / "snapshots.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.snapshots")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = run(args.runs, args.mib)
    write(results, args.out)
    for name, s in results.items():
        print(f"{name}: {s['median_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
