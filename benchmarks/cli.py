"""``python -m benchmarks``: the startup benchmark from the command line.

It sets up every contender it can (hutch through its SDK, then crun, podman and bwrap over
hutch's base-image layer), runs two scenarios with the contenders interleaved, and writes
``startup.json``, ``startup.md`` and ``startup.png`` to ``--out`` (default
``benchmarks/results``).  A contender that is missing or fails is reported as unavailable
with the reason; the run itself only fails on bad arguments or an unwritable output dir.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from benchmarks import concurrency
from benchmarks import files as files_bench
from benchmarks import images as images_bench
from benchmarks import scale as scale_bench
from benchmarks.environment import DEFAULT_IMAGE, Rootfs, locate_rootfs, machine_info
from benchmarks.harness import Outcome, Trial, Unavailable, describe, run_interleaved
from benchmarks.hutch_peer import HutchColdPeer, HutchPeer, HutchPoolPeer
from benchmarks.peers import BwrapPeer, CrunPeer, Peer, PodmanPeer, default_podman_root
from benchmarks.report import ms, ratios, write_all

ALL_PEERS = ("hutch", "hutch-cold", "hutch-pool", "crun", "podman", "bwrap")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"

SCENARIOS: dict[str, tuple[str, str]] = {
    "startup": (
        "create → first output of `python3 -c 'print(1)'`",
        "From just before the start call (hutch: `Sandbox.create`; peers: fork/exec of the "
        "CLI) to the first stdout line. Sub-timing `exit`: the process (or sandbox) has "
        "ended, teardown included; hutch's `create_return`: `Sandbox.create` returned.",
    ),
    "exec": (
        "`exec true` round trip in a running sandbox",
        "From just before the call to the exit status of `true`, in a sandbox or container "
        "that is already running `sleep infinity`. bwrap has no exec.",
    ),
}

T = TypeVar("T")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="measured runs per contender")
    parser.add_argument("--quick", action="store_true",
                        help="3 runs per contender (for the test suite); overrides --runs")
    parser.add_argument("--warmup", type=int, default=1, help="unrecorded runs first")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"where to write startup.{{md,json,png}} (default {DEFAULT_OUT})")
    parser.add_argument("--peers", default=",".join(ALL_PEERS),
                        help=f"comma-separated subset of {','.join(ALL_PEERS)}")
    parser.add_argument("--concurrency", type=int, default=50,
                        help="sandboxes started at once in the concurrency scenario "
                             "(0: skip it)")
    parser.add_argument("--concurrency-runs", type=int, default=20,
                        help="rounds of the concurrency scenario per contender")
    parser.add_argument("--scale", type=int, default=500,
                        help="idle sandboxes at once in the engine-memory scenario, after 50 "
                             "(0: skip it)")
    parser.add_argument("--scale-rounds", type=int, default=1,
                        help="rounds of the engine-memory scenario")
    parser.add_argument("--scale-fresh-engine", action="store_true",
                        help="stop the engine before each round of it (ends its sandboxes)")
    parser.add_argument("--podman-root", type=Path, default=default_podman_root(),
                        help="the benchmark's own podman storage (default %(default)s)")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = 3
        args.concurrency = min(args.concurrency, 5)
        args.concurrency_runs = 1
        args.scale = min(args.scale, 50)
        args.scale_rounds = 1
    wanted = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = sorted(set(wanted) - set(ALL_PEERS))
    if unknown or not wanted:
        parser.error(f"--peers: unknown {unknown}; choose from {','.join(ALL_PEERS)}")
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")
    args.peers = [p for p in ALL_PEERS if p in wanted]
    return args


def _attempt(make: Callable[[], T]) -> T | str:
    """Build a contender, or return why it is unavailable."""
    try:
        return make()
    except Unavailable as exc:
        return str(exc)
    except Exception as exc:  # any set-up failure makes the peer unavailable, not the run
        return describe(exc)


def _find_rootfs(hutch: HutchPeer | str) -> Rootfs | str:
    if isinstance(hutch, str):
        def fallback() -> Rootfs:
            from hutch.api import paths
            return locate_rootfs(paths.data_dir(), DEFAULT_IMAGE)
        return _attempt(fallback)
    found = _attempt(lambda: locate_rootfs(hutch.data_dir, hutch.image))
    if isinstance(found, str):
        _log(f"rootfs not found ({found}); starting one hutch sandbox to build the image")
        with contextlib.suppress(Exception):
            hutch.startup_trial()()
        found = _attempt(lambda: locate_rootfs(hutch.data_dir, hutch.image))
    return found


def _make_peers(names: list[str], hutch: HutchPeer | str, rootfs: Rootfs | str,
                work: Path, podman_root: Path) -> dict[str, Peer | str]:
    makers: dict[str, Callable[[Rootfs], Peer]] = {
        "crun": lambda r: CrunPeer(r, work),
        "podman": lambda r: PodmanPeer(r, podman_root),
        "bwrap": BwrapPeer,
    }
    peers: dict[str, Peer | str] = {}
    for name in names:
        if name == "hutch":
            peers[name] = hutch
        elif name == "hutch-cold":
            peers[name] = _attempt(HutchColdPeer) if isinstance(hutch, HutchPeer) else hutch
        elif name == "hutch-pool":
            _log("filling a warm pool")
            peers[name] = _attempt(HutchPoolPeer) if isinstance(hutch, HutchPeer) else hutch
        elif isinstance(rootfs, str):
            peers[name] = f"no shared rootfs: {rootfs}"
        else:
            _log(f"setting up {name}")
            peers[name] = _attempt(functools.partial(makers[name], rootfs))
        if isinstance(peers[name], str):
            _log(f"{name}: unavailable: {peers[name]}")
    return peers


def _scenario(key: str, peers: dict[str, Peer | str], runs: int, warmup: int
              ) -> dict[str, Any]:
    title, description = SCENARIOS[key]
    _log(f"scenario: {title}")
    trials: dict[str, Trial] = {}
    outcomes: dict[str, Outcome] = {}
    for name, peer in peers.items():
        if isinstance(peer, str):
            outcomes[name] = Outcome(name, "", available=False, reason=peer)
            continue
        command = peer.startup_command() if key == "startup" else peer.exec_command()
        outcome = outcomes[name] = Outcome(name, command or "", notes=list(peer.notes))
        try:
            trials[name] = peer.startup_trial() if key == "startup" else peer.open_exec()
        except Unavailable as exc:
            outcome.mark_unavailable(str(exc))
        except Exception as exc:
            outcome.mark_unavailable(describe(exc))
    run_interleaved(trials, outcomes, runs, warmup, progress=_log)
    return {"title": title, "description": description,
            "peers": {name: outcomes[name].as_dict() for name in peers}}


def _concurrency(peers: dict[str, Peer | str], args: argparse.Namespace) -> dict[str, Any]:
    _log(f"scenario: {args.concurrency} sandboxes at once")
    with ThreadPoolExecutor(concurrency.PARALLEL) as pool:
        rounds = []
        for name, peer in peers.items():
            if name == "hutch" and isinstance(peer, HutchPeer):
                rounds.append(concurrency.hutch_round(pool))
                rounds.append(concurrency.hutch_round(pool, exec_first=True))
            elif isinstance(peer, CrunPeer):
                rounds.append(concurrency.crun_round(pool, peer))
                rounds.append(concurrency.crun_isolated_round(
                    pool, peer, peer.state.parent / "crun-isolated"))
            elif isinstance(peer, PodmanPeer):
                rounds.append(concurrency.podman_round(pool, peer))
        return concurrency.run(rounds, args.concurrency, args.concurrency_runs, _log)


def _files_and_images(results: dict[str, Any], args: argparse.Namespace, out: Path) -> None:
    """The file-copy and image-build benchmarks, in the same run (their own reports too)."""
    _log("scenario: files into and out of a running sandbox")
    found = _attempt(lambda: files_bench.run(args.runs, 1 if args.quick else 5,
                                             peers="podman" in args.peers))
    if isinstance(found, str):
        results["notes"].append(f"files benchmark failed: {found}")
    else:
        results["files"] = found
        files_bench.write(found, out)
    _log("scenario: image builds and cache hits")
    built = _attempt(lambda: images_bench.run(1 if args.quick else 5, args.runs))
    if isinstance(built, str):
        results["notes"].append(f"image benchmark failed: {built}")
        return
    _log("scenario: create -> first output by image (10 layers, a large one)")
    by_image = _attempt(lambda: images_bench.run_by_image(
        2 if args.quick else args.runs, 64 if args.quick else images_bench.BIG_MIB,
        progress=_log))
    if isinstance(by_image, str):
        results["notes"].append(f"image start benchmark failed: {by_image}")
    results["images"] = built
    results["images_by_image"] = None if isinstance(by_image, str) else by_image
    images_bench.write(built, out, results["images_by_image"])


def _scale(results: dict[str, Any], args: argparse.Namespace, out: Path) -> None:
    """The engine with 0, 50 and ``--scale`` idle sandboxes (its own report too)."""
    steps = scale_bench.steps_for(args.scale)
    _log(f"scenario: {scale_bench.title(steps).lower()}")
    found = _attempt(lambda: scale_bench.run(steps, args.scale_rounds, args.scale_fresh_engine,
                                             progress=_log))
    if isinstance(found, str):
        results["notes"].append(f"scale benchmark failed: {found}")
    else:
        results["scale"] = found
        scale_bench.write(found, out)


def _summary(results: dict[str, Any]) -> str:
    lines = []
    for scenario in results["scenarios"].values():
        lines.append(scenario["title"])
        rel = ratios(scenario)
        for name, peer in scenario["peers"].items():
            stats = peer["stats_s"]
            if stats is None:
                lines.append(f"  {name:7} unavailable: {peer['reason']}")
                continue
            ratio = f"  hutch/{name} = {rel[name]:.2f}" if rel.get(name) else ""
            lines.append(f"  {name:7} median {ms(stats['median']):>9}  p10 {ms(stats['p10']):>9}"
                         f"  p90 {ms(stats['p90']):>9}{ratio}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _log(f"cannot create {out}: {exc}")
        return 2
    if not os.access(out, os.W_OK):
        _log(f"{out} is not writable by this user; pass --out DIR")
        return 2
    results: dict[str, Any] = {
        "benchmark": "startup",
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "runs": args.runs, "warmup": args.warmup, "quick": args.quick,
        "machine": machine_info(), "notes": [], "scenarios": {},
    }
    _log("connecting to the hutch engine")
    hutch = _attempt(HutchPeer)
    if isinstance(hutch, HutchPeer):
        results["hutch_engine"] = hutch.engine
        results["hutch_version"] = hutch.version
        rtt = _attempt(lambda: hutch.request_rtt(5 if args.quick else 20))
        if not isinstance(rtt, str):
            results["hutch_request_rtt_s"] = rtt.as_dict()
            results["notes"].append(
                f"hutch SDK round trip of a no-op request (GET /v1/health): median "
                f"{ms(rtt.median)} (p10 {ms(rtt.p10)}, p90 {ms(rtt.p90)})")
    else:
        _log(f"hutch: unavailable: {hutch}")
    rootfs = _find_rootfs(hutch)
    results["rootfs"] = rootfs.as_dict() if isinstance(rootfs, Rootfs) else None
    if isinstance(rootfs, str):
        results["notes"].append(f"shared rootfs not found: {rootfs}")
    with tempfile.TemporaryDirectory(prefix="hutch-bench-", ignore_cleanup_errors=True) as tmp:
        peers = _make_peers(args.peers, hutch, rootfs, Path(tmp), args.podman_root)
        try:
            for key in SCENARIOS:
                try:
                    results["scenarios"][key] = _scenario(key, peers, args.runs, args.warmup)
                finally:
                    for peer in peers.values():
                        if not isinstance(peer, str):
                            peer.close()
            if args.concurrency > 0:
                results["concurrency"] = _concurrency(peers, args)
            if "hutch" in args.peers and isinstance(hutch, HutchPeer):
                _files_and_images(results, args, out)
                if args.scale > 0:
                    _scale(results, args, out)
        except KeyboardInterrupt:
            _log("interrupted; writing what was measured")
    written = write_all(results, out)
    print(_summary(results))
    for path in written:
        print(f"wrote {path}")
    return 0
