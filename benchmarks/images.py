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

And, with :func:`run_by_image` (issue 21), create → first output of ``python3 -c
'print(1)'`` from three cached images: the default (``debian_slim``, 2 layers), one of 10
layers (``debian_slim`` and 8 ``run_commands`` steps that each write a small file) and one
with 1 GiB more (a ``run_commands`` step writing 1 GiB of random bytes): interleaved, every
image alike, with the engine's *reserve* emptied (``PUT /v1/engine/reserve {"size": 0}``,
restored after), then once more with the reserve keeping each image's configuration in
turn (what a create of the configuration used most gets).  Each image is built (once: later
runs find it cached) and started once, untimed, before anything is timed: that first
sandbox of an image copies its layers into the engine's memory (docs/security.md).

Results go to ``benchmarks/results/images.md`` and ``images.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import Outcome, Sample, Trial, TrialError, run_interleaved, timed_runs
from benchmarks.peers import PRINT_ARGV

RESULTS = Path(__file__).parent / "results"
#: The layered image's layers, and how much the large one adds (MiB).
LAYERS, BIG_MIB = 10, 1024
#: Issue 21: a cached image of 10 layers, or of 1 GB, starts at most this much slower.
TARGET_RATIO = 1.10


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


def _image_facts(ref: str) -> dict[str, Any]:
    from benchmarks.basecost import _sizes
    from hutch.sdk.transport import request_blocking

    data = Path(request_blocking("GET", "/v1/engine")["data_dir"])
    return {"ref": ref, **_sizes(data, ref)}


def variants(big_mib: int = BIG_MIB) -> dict[str, tuple[str, Any]]:
    """The images compared: name -> (how it is declared, the hutch.Image)."""
    import hutch

    base = hutch.Image.debian_slim()
    base_layers = _image_facts(str(base.build().object_id))["layers"]
    layered = base
    for i in range(LAYERS - base_layers):
        layered = layered.run_commands(f"echo {i} > /layer-{i}.txt")
    big = base.run_commands(f"head -c {big_mib}M /dev/urandom > /big.bin")
    return {
        "default": ("Image.debian_slim()", base),
        f"{LAYERS} layers": (f"debian_slim() + {LAYERS - base_layers} run_commands('echo i "
                             "> /layer-i.txt')", layered),
        f"+{big_mib} MiB": (f"debian_slim().run_commands('head -c {big_mib}M /dev/urandom "
                            "> /big.bin')", big),
    }


def first_output(image: Any) -> Sample:
    """``Sandbox.create(python3 -c 'print(1)', image=image)`` to its first stdout line."""
    import hutch

    begin = time.perf_counter()
    sb = hutch.Sandbox.create(*PRINT_ARGV, image=image, timeout=60)
    line = next(iter(sb.stdout), "")
    elapsed = time.perf_counter() - begin
    sb.wait(raise_on_termination=False)
    if line.strip() != "1":
        raise TrialError(f"{sb.object_id}: first line {line!r}")
    return Sample(elapsed)


def _reserve(size: int | None = None) -> dict[str, int]:
    from hutch.sdk.transport import request_blocking

    if size is not None:
        answer: dict[str, int] = request_blocking("PUT", "/v1/engine/reserve",
                                                  json_body={"size": size})
        return answer
    info: dict[str, int] = request_blocking("GET", "/v1/engine")["reserve"]
    return info


def _await_reserve(full: bool, timeout: float = 60.0) -> None:
    """Until the reserve is full (``full``) or has nothing waiting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = _reserve()
        if (info["ready"] >= info["size"]) if full else not info["ready"]:
            return
        time.sleep(0.02)


def run_by_image(runs: int, big_mib: int = BIG_MIB,
                 progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Create -> first output from the default, a 10-layer and a large image (see the
    module docstring): reserve emptied (interleaved), then kept for each in turn."""
    from hutch.engine.lifecycle.reserve import RECENT

    images: dict[str, Any] = {}
    built: dict[str, Any] = {}
    for name, (declared, image) in variants(big_mib).items():
        progress(f"  building {name} (cached after its first run)")
        begin = time.perf_counter()
        built[name] = image.build()
        images[name] = {"declared": declared, "build_s": time.perf_counter() - begin,
                        **_image_facts(str(built[name].object_id))}
    size = _reserve()["size"]
    out: dict[str, Any] = {"runs": runs, "big_mib": big_mib, "reserve_size": size,
                           "target_ratio": TARGET_RATIO, "images": images}
    _reserve(0)
    try:
        _await_reserve(full=False)
        for name in built:  # each image's layers into the engine's memory, untimed
            images[name]["first_create_s"] = first_output(built[name]).seconds
        trials: dict[str, Trial] = {n: functools.partial(first_output, i)
                                    for n, i in built.items()}
        cold = {n: Outcome(n, "reserve emptied") for n in built}
        progress(f"  reserve emptied: {runs} runs each, interleaved")
        run_interleaved(trials, cold, runs, warmup=1, progress=progress)
    finally:
        _reserve(size)
    out["cold"] = {n: o.as_dict() for n, o in cold.items()}
    kept: dict[str, Outcome] = {}
    for name, image in built.items() if size else ():
        progress(f"  reserve kept for {name}: {runs} runs")
        for _ in range(RECENT):  # the configuration used most lately: the reserve keeps it
            first_output(image)

        def trial(image: Any = image) -> Sample:
            _await_reserve(full=True)
            return first_output(image)
        kept[name] = Outcome(name, "reserve keeps this image's configuration")
        run_interleaved({name: trial}, kept, runs, warmup=0, progress=progress)
    out["reserve"] = {n: o.as_dict() for n, o in kept.items()}
    out["ratios"] = {mode: ratios_to_default(out[mode]) for mode in ("cold", "reserve")}
    return out


def ratios_to_default(outcomes: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Each image's median divided by the default image's (None where one is missing)."""
    ref = (outcomes.get("default") or {}).get("stats_s")
    out: dict[str, float | None] = {}
    for name, outcome in outcomes.items():
        stats = outcome.get("stats_s")
        out[name] = stats["median"] / ref["median"] if stats and ref else None
    return out


def _ms_stats(outcome: dict[str, Any] | None) -> str:
    stats = (outcome or {}).get("stats_s")
    if not stats:
        return "unavailable" + (f": {outcome['reason']}" if outcome and outcome.get("reason")
                                else "")
    return (f"**{stats['median'] * 1000:.1f} ms** ({stats['p10'] * 1000:.1f}-"
            f"{stats['p90'] * 1000:.1f})")


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def by_image_table(result: dict[str, Any]) -> list[str]:
    """Markdown: per image its size and its create -> first output, reserve emptied and
    kept, with the ratios to the default image and the target's verdict."""
    lines = ["| image | layers | unpacked | reserve emptied: median (p10-p90) | ÷ default | "
             "reserve kept: median (p10-p90) | ÷ default |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    ratio = result.get("ratios", {})
    for name, facts in result["images"].items():
        cold = result.get("cold", {}).get(name)
        kept = result.get("reserve", {}).get(name)
        lines.append(f"| {name}: `{facts['declared']}` | {facts['layers']} | "
                     f"{facts['unpacked_bytes'] / 2**20:.0f} MiB | {_ms_stats(cold)} | "
                     f"{_ratio(ratio.get('cold', {}).get(name))} | "
                     f"{_ms_stats(kept) if kept else '—'} | "
                     f"{_ratio(ratio.get('reserve', {}).get(name))} |")
    verdicts = []
    for mode, label in (("cold", "reserve emptied"), ("reserve", "reserve kept")):
        for name, value in ratio.get(mode, {}).items():
            if name != "default" and value is not None:
                met = "met" if value <= result["target_ratio"] else "not met"
                verdicts.append(f"{name}, {label}: {value:.2f}x ({met})")
    if verdicts:
        lines += ["", f"Target (issue 21): at most {result['target_ratio']:.2f}x the default "
                  f"image: {'; '.join(verdicts)}."]
    return lines


def by_image_section(result: dict[str, Any]) -> list[str]:
    firsts = ", ".join(f"{name} {facts['first_create_s'] * 1000:.0f} ms"
                       for name, facts in result["images"].items()
                       if facts.get("first_create_s") is not None)
    return [
        "## Create → first output by image", "",
        f"`Sandbox.create('python3', '-c', 'print(1)', image=...)` to its first line, "
        f"{result['runs']} runs per image after one warm-up round. *Reserve emptied*: "
        "the engine's reserve set to 0 (`PUT /v1/engine/reserve`), the images interleaved "
        "round-robin, each create makes its container (as for a configuration not used "
        f"before). *Reserve kept*: the reserve back at {result['reserve_size']}, keeping the "
        f"image's configuration ({_recent()} untimed creates of it first), each trial "
        "waiting untimed until it is full: what a create of the configuration used most "
        "gets. p10-p90 in parentheses, ms.", "",
        *by_image_table(result), "",
        f"The first sandbox of each image in this run (untimed; it copies the image's "
        f"layers into the engine's memory unless a sandbox of it ran in the last minutes): "
        f"{firsts or '—'}."]


def _recent() -> int:
    from hutch.engine.lifecycle.reserve import RECENT

    return RECENT


def write(results: dict[str, Any], out: Path, by_image: dict[str, Any] | None = None
          ) -> None:
    """``images.json`` (``builds``: :func:`run`'s figures; ``by_image``) and ``images.md``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "images.json").write_text(json.dumps({"builds": results, "by_image": by_image},
                                                indent=1))
    lines = ["# Image builds", "", "`python -m benchmarks.images`: medians on this machine "
             "(see the module docstring for what each figure covers).", "",
             *figures_table(results)]
    if by_image:
        lines += ["", *by_image_section(by_image)]
    (out / "images.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.images")
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20, help="cache-hit and start runs")
    parser.add_argument("--by-image-runs", type=int, default=20,
                        help="runs per image of create -> first output by image (0: skip)")
    parser.add_argument("--big-mib", type=int, default=BIG_MIB,
                        help="what the large image adds, MiB (default %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = run(args.cold_runs, args.runs)
    by_image = run_by_image(args.by_image_runs, args.big_mib) if args.by_image_runs else None
    write(results, args.out, by_image)
    for name, r in results.items():
        print(f"{name}: median {r['median_ms']:.1f} ms ({r['runs']} runs)")
    if by_image:
        print("\n".join(by_image_table(by_image)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
