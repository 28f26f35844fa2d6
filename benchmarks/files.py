"""``python -m benchmarks.files``: copying files into and out of a running sandbox.

For a 1 MiB and a 256 MiB file of random bytes, medians of several runs of
``sb.filesystem.copy_from_local`` / ``copy_to_local`` (hutch), beside ``podman cp`` into
and out of a running rootless podman container of the same Debian rootfs (the startup
benchmark's storage and image).  Figures are MB/s (10^6 bytes per second) and ms per copy.
Results go to ``benchmarks/results/files.md`` and ``files.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.harness import timed_runs

RESULTS = Path(__file__).parent / "results"
SIZES = {"1 MiB": 1 << 20, "256 MiB": 256 << 20}


def _figure(samples: list[float], size: int) -> dict[str, float]:
    median = statistics.median(samples)
    return {"median_ms": median * 1000, "mb_per_s": size / median / 1e6, "runs": len(samples)}


def _hutch(files: dict[str, Path], runs: dict[str, int], work: Path) -> dict[str, Any]:
    import hutch

    sb = hutch.Sandbox.create(timeout=600)
    try:
        out: dict[str, Any] = {}
        for label, local in files.items():
            size = local.stat().st_size
            up = timed_runs(lambda local=local: sb.filesystem.copy_from_local(local, "/tmp/f"),
                       runs[label])
            back = work / "back"
            down = timed_runs(lambda back=back: sb.filesystem.copy_to_local("/tmp/f", back),
                         runs[label])
            if back.read_bytes() != local.read_bytes():
                raise RuntimeError("hutch copy_to_local returned different bytes")
            out[label] = {"write": _figure(up, size), "read": _figure(down, size)}
        return out
    finally:
        sb.terminate()


def _podman(files: dict[str, Path], runs: dict[str, int], work: Path) -> dict[str, Any] | str:
    try:
        from benchmarks.environment import DEFAULT_IMAGE, locate_rootfs
        from benchmarks.peers import PodmanPeer, default_podman_root
        from hutch.api import paths

        try:
            rootfs = locate_rootfs(paths.data_dir(), DEFAULT_IMAGE)
        except Exception as exc:
            return f"no shared rootfs: {exc}"
        peer = PodmanPeer(rootfs, default_podman_root())
    except Exception as exc:
        return f"podman unavailable: {exc}"
    cid = subprocess.run([*peer.base, "run", "-d", "--rm", "--pull=never", peer.tag, "sleep",
                          "infinity"], capture_output=True, text=True, check=True).stdout.strip()
    try:
        out: dict[str, Any] = {}
        for label, local in files.items():
            size = local.stat().st_size
            back = work / "podman-back"
            up = timed_runs(lambda local=local: subprocess.run(
                [*peer.base, "cp", str(local), f"{cid}:/tmp/f"], check=True), runs[label])
            down = timed_runs(lambda back=back: subprocess.run(
                [*peer.base, "cp", f"{cid}:/tmp/f", str(back)], check=True), runs[label])
            out[label] = {"write": _figure(up, size), "read": _figure(down, size)}
        return out
    finally:
        subprocess.run([*peer.base, "rm", "--force", "--time", "0", cid], capture_output=True)


def run(small_runs: int, large_runs: int, peers: bool = True) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="hutch-bench-files-"))
    files = {}
    for label, size in SIZES.items():
        path = work / label.replace(" ", "")
        with open(path, "wb") as f:
            for _ in range(size // (1 << 20)):
                f.write(os.urandom(1 << 20))
        files[label] = path
    runs = {"1 MiB": small_runs, "256 MiB": large_runs}
    try:
        results: dict[str, Any] = {"hutch": _hutch(files, runs, work)}
        if peers:
            results["podman cp"] = _podman(files, runs, work)
        return results
    finally:
        for path in work.iterdir():
            path.unlink()
        work.rmdir()


def write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "files.json").write_text(json.dumps(results, indent=1))
    lines = ["# Files into and out of a running sandbox", "",
             "`python -m benchmarks.files`: medians; hutch `copy_from_local`/`copy_to_local`, "
             "podman `podman cp` (see the module docstring).", "", *table(results)]
    (out / "files.md").write_text("\n".join(lines) + "\n")


def table(results: dict[str, Any]) -> list[str]:
    """The markdown table of ``results`` (also in the main report)."""
    lines = ["| contender | size | write | read |", "|---|---|---:|---:|"]
    for who, figures in results.items():
        if isinstance(figures, str):
            lines.append(f"| {who} | — | {figures.replace('|', '/')} | |")
            continue
        for size, f in figures.items():
            lines.append(f"| {who} | {size} | {f['write']['median_ms']:.1f} ms "
                         f"({f['write']['mb_per_s']:.0f} MB/s) | {f['read']['median_ms']:.1f} "
                         f"ms ({f['read']['mb_per_s']:.0f} MB/s) |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.files")
    parser.add_argument("--runs", type=int, default=20, help="runs of the 1 MiB copies")
    parser.add_argument("--large-runs", type=int, default=5, help="runs of the 256 MiB copies")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = run(args.runs, args.large_runs, peers=not args.no_peers)
    write(results, args.out)
    print((args.out / "files.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
