"""``python -m benchmarks.localfiles``: a 10,000-file tree into a sandbox, both ways.

"Check out a repository and run its test suite": the tree is 1,000 directories of 10
files of 2 KiB (20 MB).  Each figure is create -> first output of ``ls /work | wc -l`` in
a new sandbox, median of several runs, for:

- ``copy=False`` (Modal's default): the files are taken from the host when the sandbox
  starts (:mod:`hutch.engine.storage.locallayers`): *unchanged* (the engine walks the tree
  to see that it is, and reuses its copy) and *one file edited* before each run (a new
  copy);
- ``copy=True``: the files are a build step: *unchanged* (the SDK reads and tars the tree
  when the image is declared, the engine finds the step cached) and *one file edited*
  (a new layer is built: tar, upload, unpack).

Results go to ``benchmarks/results/localfiles.md`` and ``localfiles.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.images import figures_table, median_ms

RESULTS = Path(__file__).parent / "results"
DIRS, FILES, SIZE = 1000, 10, 2048


def make_tree(root: Path) -> Path:
    for d in range(DIRS):
        sub = root / f"d{d:04}"
        sub.mkdir(parents=True)
        for f in range(FILES):
            (sub / f"f{f}.txt").write_bytes(bytes([65 + f]) * SIZE)
    return root


def _first_output(image: Any) -> float:
    import hutch

    begin = time.perf_counter()
    sb = hutch.Sandbox.create("sh", "-c", "ls /work | wc -l", image=image, timeout=120)
    line = next(iter(sb.stdout))
    elapsed = time.perf_counter() - begin
    sb.wait()
    if line.strip() != str(DIRS):
        raise RuntimeError(f"the sandbox saw {line.strip()} directories, not {DIRS}")
    return elapsed


def run(runs: int) -> dict[str, Any]:
    import hutch

    base = hutch.Image.debian_slim()
    base.build()
    with tempfile.TemporaryDirectory() as tmp:
        tree = make_tree(Path(tmp) / "tree")
        edited = tree / "d0000" / "f0.txt"
        counter = [0]

        def edit() -> None:
            counter[0] += 1
            edited.write_text(f"edit {counter[0]} {time.time_ns()}")

        def measure(copy: bool, before: Callable[[], None] | None) -> list[float]:
            samples = []
            for _ in range(runs + 1):  # the first run warms what "unchanged" reuses
                if before is not None:
                    before()
                begin = time.perf_counter()
                image = base.add_local_dir(tree, "/work", copy=copy)  # declared each time
                samples.append(time.perf_counter() - begin + _first_output(image))
            return samples[1:]

        return {
            "copy=False, unchanged tree": median_ms(measure(False, None)),
            "copy=False, one file edited before each run": median_ms(measure(False, edit)),
            "copy=True, unchanged tree": median_ms(measure(True, None)),
            "copy=True, one file edited before each run": median_ms(measure(True, edit)),
        }


def write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "localfiles.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Local files into a sandbox: copy=False and copy=True", "",
             f"`python -m benchmarks.localfiles`: a tree of {DIRS * FILES:,} files "
             f"({DIRS} directories of {FILES} files of {SIZE} bytes); declare the image and "
             "create a sandbox -> first output line, medians on this machine (the module "
             "docstring says what each covers).", "", *figures_table(results)]
    (out / "localfiles.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.localfiles")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = run(args.runs)
    write(results, args.out)
    for name, s in results.items():
        print(f"{name}: {s['median_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
