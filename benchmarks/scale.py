"""``python -m benchmarks.scale``: the engine with 0, 50 and 500 idle sandboxes.

The engine is the *pause* process (``python -m hutch.engine.pause``: namespaces, reaper of
the sandboxes' inits) and the *daemon*, its child (``GET /v1/engine`` ``pid``).  A sandbox
adds its init (a child of the pause process) and a ``slirp4netns`` (the daemon's), known
by the sandbox id in their cgroup or command line.  A round: 8 sandboxes created and ended
(the reserve keeps their configuration), then the engine measured with none of ours
(``0``); for each step (50, 500) that many idle sandboxes (``Sandbox.create()``: ``sleep
infinity``) started at once from 16 threads as ``benchmarks/concurrency.py`` does, timed
until every create returned, the engine measured, every sandbox terminated (timed); at the
end measured again (``0 again``).  A measurement: ``smaps_rollup`` (RSS; PSS, shared pages
divided among their sharers) of every process under the pause process, sorted into the
daemon, the pause process, our sandboxes', the reserve's waiting ones' and the rest; the
daemon's open files; ``MemTotal - MemAvailable``.  Figures: the daemon's RSS at each step
and its growth per sandbox, ``(RSS@500 - RSS@0) / 500`` (issue 21: at most 0.5 MiB); the
PSS all engine processes gained per sandbox; each sandbox's own processes; the machine's.
A daemon keeps the memory it once used, so a round after another on the same engine
understates the growth: ``--fresh-engine`` stops the engine before each round (ending
every sandbox it runs).  Medians over rounds: ``results/scale.md`` and ``scale.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.concurrency import PARALLEL
from benchmarks.harness import describe, wait_quiet
from benchmarks.procmem import engine_processes, machine_used, open_files_limit, summarize

RESULTS = Path(__file__).parent / "results"
MIB = 2**20
#: Issue 21: the daemon's growth per idle sandbox stays at or below this.
TARGET_PER_SANDBOX = 0.5 * MIB
#: The sandboxes created (and ended) before a round's first measurement: as many as the
#: reserve's window, so that it keeps this benchmark's configuration.
WARMUP_CREATES = 8


def measure(daemon: int, mine: set[str], reserve: dict[str, int]) -> dict[str, Any]:
    pause, procs = engine_processes(daemon)
    return {**summarize(procs, daemon, pause, mine), "reserve": reserve,
            "machine_used": machine_used(Path("/proc/meminfo").read_text()),
            "daemon_fds": len(os.listdir(f"/proc/{daemon}/fd"))}


class Engine:
    """The user's engine through the SDK: its description, its reserve, a restart."""

    def __init__(self) -> None:
        from hutch.sdk.transport import request_blocking

        self.request = request_blocking
        self.info: dict[str, Any] = request_blocking("GET", "/v1/engine")

    @property
    def daemon(self) -> int:
        return int(self.info["pid"])

    def reserve(self) -> dict[str, int]:
        info: dict[str, int] = self.request("GET", "/v1/engine")["reserve"]
        return info

    def settle(self, timeout: float = 60.0) -> dict[str, int]:
        """Until the reserve holds what it keeps and the machine is quiet (untimed); the
        engine's description read again (a daemon that ended was restarted)."""
        deadline = time.monotonic() + timeout
        info = self.reserve()
        while info["ready"] < info["size"] and time.monotonic() < deadline:
            time.sleep(0.05)
            info = self.reserve()
        wait_quiet(max_wait=10.0)
        self.info = self.request("GET", "/v1/engine")
        reserve: dict[str, int] = self.info["reserve"]
        return reserve

    def restart(self) -> None:
        """Stop the engine (and every sandbox it runs); the next request starts a new one."""
        from hutch.sdk import transport

        subprocess.run([sys.executable, "-m", "hutch", "engine", "stop"],
                       capture_output=True, timeout=300, check=False)
        transport.forget_clients()
        self.info = self.request("GET", "/v1/engine")


def start_many(pool: ThreadPoolExecutor, n: int, timeout: float = 3600
               ) -> tuple[list[Any], list[str]]:
    """``n`` idle sandboxes created at once: the sandboxes, and the errors of those that
    failed (the run goes on with what started)."""
    import hutch

    def create(_: int) -> Any:
        try:
            return hutch.Sandbox.create(timeout=timeout)
        except Exception as exc:  # counted and reported
            return exc
    made = list(pool.map(create, range(n)))
    return ([m for m in made if not isinstance(m, Exception)],
            [describe(m) for m in made if isinstance(m, Exception)])


def stop_all(pool: ThreadPoolExecutor, sandboxes: list[Any]) -> list[str]:
    def stop(sb: Any) -> str | None:
        try:
            sb.terminate(wait=True)
        except Exception as exc:  # reported; the next round starts anyway
            return f"{sb.object_id}: {describe(exc)}"
        return None
    return [e for e in pool.map(stop, sandboxes) if e]


def one_round(engine: Engine, steps: list[int], progress: Callable[[str], None]
              ) -> dict[str, Any]:
    """A round (module docstring).  A step where creates fail is measured with those that
    started (``started``), unless the daemon ended meanwhile; the errors are kept."""
    import hutch

    for _ in range(WARMUP_CREATES):
        hutch.Sandbox.create(timeout=60).terminate(wait=True)
    points = {"0": measure(engine.daemon, set(), engine.settle())}
    out: dict[str, Any] = {"points": points, "start_s": {}, "teardown_s": {}, "errors": {}}
    with ThreadPoolExecutor(PARALLEL) as pool:
        for n in steps:
            daemon, t0 = engine.daemon, time.perf_counter()
            sandboxes, errors = start_many(pool, n)
            elapsed = time.perf_counter() - t0
            try:
                reserve = engine.settle(timeout=5 if errors else 60)  # it may not refill
                if engine.daemon != daemon:
                    errors.insert(0, f"the engine's daemon ended (pid {daemon}; the pause "
                                     f"process started {engine.daemon})")
                if errors:
                    out["errors"][str(n)] = {"failed": n - len(sandboxes), "first": errors[0],
                                             "started": len(sandboxes), "seconds": elapsed}
                    progress(f"  {n} at once: {n - len(sandboxes)} failed in {elapsed:.2f} s, "
                             f"first: {errors[0]}")
                else:
                    out["start_s"][str(n)] = elapsed
                if sandboxes and engine.daemon == daemon:
                    mine = {sb.object_id for sb in sandboxes}
                    points[str(n)] = {**measure(daemon, mine, reserve), "started": len(mine)}
                    progress(f"  {len(mine)} of {n} running after {elapsed:.2f} s; daemon RSS "
                             f"{points[str(n)]['daemon']['rss'] / MIB:.1f} MiB")
            finally:
                t1 = time.perf_counter()
                failed = stop_all(pool, sandboxes)
                out["teardown_s"][str(n)] = time.perf_counter() - t1
                if failed:
                    out["errors"][f"{n} teardown"] = {"failed": len(failed), "first": failed[0]}
                    progress(f"  {len(failed)} terminates failed, first: {failed[0]}")
    points["after"] = measure(engine.daemon, set(), engine.settle())
    return out


def steps_for(sandboxes: int, first: int = 50) -> list[int]:
    """The steps of a run up to ``sandboxes``: 50 (when below it), then ``sandboxes``."""
    return sorted({n for n in (first, sandboxes) if 0 < n <= sandboxes})


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def aggregate(rounds: list[dict[str, Any]], steps: list[int]) -> dict[str, Any]:
    """Medians over rounds of every figure the report shows (bytes and seconds)."""
    def dig(value: Any, keys: tuple[str, ...]) -> Any:
        for key in keys:
            value = None if value is None else value.get(key)
        return value

    def at(point: str, *keys: str) -> float | None:
        return _median([v for r in rounds
                        if (v := dig(r["points"].get(point), keys)) is not None])

    def per_sandbox(n: int, fn: Callable[[dict[str, Any]], float]) -> float | None:
        return _median([fn(r["points"][str(n)]) for r in rounds if str(n) in r["points"]])

    def growth(n: int, *keys: str) -> float | None:
        return _median([(dig(p, keys) - dig(r["points"]["0"], keys)) / p.get("started", n)
                        for r in rounds if (p := r["points"].get(str(n)))])

    points = ["0", *(str(n) for n in steps), "after"]
    out: dict[str, Any] = {"points": {}, "steps": {}}
    for p in points:
        out["points"][p] = {
            "daemon_rss": at(p, "daemon", "rss"), "daemon_pss": at(p, "daemon", "pss"),
            "pause_rss": at(p, "pause", "rss"), "pause_pss": at(p, "pause", "pss"),
            "helpers_pss": at(p, "helpers", "pss"), "total_pss": at(p, "total_pss"),
            "reserve_sandboxes": at(p, "other_sandboxes", "count"),
            "reserve_pss": at(p, "other_sandboxes", "pss"), "daemon_fds": at(p, "daemon_fds"),
            "started": at(p, "started"),
            "rounds": sum(1 for r in rounds if p in r["points"])}
    for n in steps:
        key = str(n)
        out["steps"][key] = {
            "start_s": _median([r["start_s"][key] for r in rounds if key in r["start_s"]]),
            "teardown_s": _median([r["teardown_s"][key] for r in rounds
                                   if key in r["teardown_s"]]),
            "daemon_rss_per_sandbox": growth(n, "daemon", "rss"),
            "daemon_pss_per_sandbox": growth(n, "daemon", "pss"),
            "engine_pss_per_sandbox": growth(n, "total_pss"),
            "machine_per_sandbox": growth(n, "machine_used"),
            "own_pss_per_sandbox": per_sandbox(
                n, lambda p: p["sandboxes"]["pss"] / max(1, p["sandboxes"]["count"])),
            "own_processes_per_sandbox": per_sandbox(
                n, lambda p: p["sandboxes"]["processes"] / max(1, p["sandboxes"]["count"])),
            "failed_rounds": sum(1 for r in rounds if key in r["errors"]),
            "errors": [r["errors"][key] for r in rounds if key in r["errors"]]}
    return out


def run(steps: list[int], rounds: int, fresh_engine: bool = False,
        progress: Callable[[str], None] = print) -> dict[str, Any]:
    """``rounds`` rounds of the ``steps`` (idle sandboxes at once); medians and raw."""
    from benchmarks.environment import machine_info

    steps = sorted(set(steps))
    engine = Engine()
    raw = []
    for i in range(rounds):
        if fresh_engine:
            progress("  restarting the engine")
            engine.restart()
        progress(f"  round {i + 1}/{rounds} (engine daemon pid {engine.daemon})")
        raw.append(one_round(engine, steps, progress))
    info = {**engine.info, "open_files": open_files_limit(
        Path(f"/proc/{engine.daemon}/limits").read_text())}
    return {"benchmark": "scale",
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "sandboxes": max(steps), "steps": steps, "rounds": rounds,
            "fresh_engine": fresh_engine, "machine": machine_info(),
            "engine": {k: info.get(k) for k in ("version", "runtime", "userns_mode",
                                                "exec_via", "reserve", "open_files")},
            "target_daemon_bytes_per_sandbox": TARGET_PER_SANDBOX,
            "medians": aggregate(raw, steps), "raw": raw}


def _mib(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value / MIB:.{digits}f} MiB"


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def verdict(result: dict[str, Any]) -> str | None:
    """Whether the daemon's growth per sandbox at the largest step meets the target (and
    with how many sandboxes, where fewer ran)."""
    top = str(max(result["steps"], default=0))
    step, point = result["medians"]["steps"].get(top), result["medians"]["points"].get(top)
    if not step or step["daemon_rss_per_sandbox"] is None or not point:
        return None
    ok = step["daemon_rss_per_sandbox"] <= result["target_daemon_bytes_per_sandbox"]
    ran = point.get("started")
    return ("met" if ok else "not met") + (
        f", with {ran:.0f} of {top} running" if ran is not None and ran < int(top) else "")


def _point_label(point: str, started: float | None) -> str:
    if point == "after":
        return "0 again (after the largest step ended)"
    return point if started is None or started >= int(point) else \
        f"{point} asked, {started:.0f} ran"


def title(steps: list[int]) -> str:
    """``The engine with 0, 50 and 500 idle sandboxes`` for steps 50 and 500."""
    counts = ["0", *map(str, steps)]
    return f"The engine with {', '.join(counts[:-1])} and {counts[-1]} idle sandboxes"


def section(result: dict[str, Any], heading: str = "##") -> list[str]:
    """The report's tables (also a section of ``startup.md``)."""
    med, steps = result["medians"], result["steps"]
    out = [f"{heading} Time until all run", "",
           "| idle sandboxes at once | all running: median | terminate all: median | "
           "rounds failed |", "|---:|---:|---:|---|"]
    for n in steps:
        st = med["steps"][str(n)]
        failed = f"{st['failed_rounds']} of {result['rounds']}"
        if st["errors"]:
            first = st["errors"][0]
            failed += f": {first['failed']} creates failed"
            if "started" in first:
                failed += f" ({first['started']} ran, after {first['seconds']:.2f} s)"
            failed += f", first: {first['first']}"
        out.append(f"| {n} | **{_s(st['start_s'])}** | {_s(st['teardown_s'])} | "
                   f"{failed.replace('|', '/')} |")
    out += ["", f"{heading} The engine's memory", "",
            "| idle sandboxes | daemon RSS | daemon PSS | pause RSS | pause PSS | "
            "helpers PSS | reserve waiting: PSS | all engine processes: PSS | daemon's "
            "open files |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for point, p in med["points"].items():
        if not p["rounds"]:
            continue
        waiting = f"{p['reserve_sandboxes'] or 0:.0f}: {_mib(p['reserve_pss'], 2)}"
        out.append(f"| {_point_label(point, p['started'])} | **{_mib(p['daemon_rss'])}** | "
                   f"{_mib(p['daemon_pss'])} | {_mib(p['pause_rss'])} | "
                   f"{_mib(p['pause_pss'])} | {_mib(p['helpers_pss'], 2)} | {waiting} | "
                   f"{_mib(p['total_pss'])} | {p['daemon_fds'] or 0:.0f} |")
    out += ["", "Per idle sandbox, from 0 to each step (the growth divided by the sandboxes "
            "added; the sandbox's own processes: its init and slirp4netns; the machine: "
            "`MemTotal - MemAvailable`, the kernel's part included):", "",
            "| step | daemon RSS growth | daemon PSS growth | all engine processes: PSS "
            "growth | the sandbox's own processes: PSS (processes) | the machine |",
            "|---:|---:|---:|---:|---:|---:|"]
    for n in steps:
        st = med["steps"][str(n)]
        procs, ran = st["own_processes_per_sandbox"], med["points"][str(n)]["started"]
        out.append(f"| {_point_label(str(n), ran)} | **{_mib(st['daemon_rss_per_sandbox'], 3)}** | "
                   f"{_mib(st['daemon_pss_per_sandbox'], 3)} | "
                   f"{_mib(st['engine_pss_per_sandbox'], 3)} | "
                   f"{_mib(st['own_pss_per_sandbox'], 3)} "
                   f"({'—' if procs is None else f'{procs:.1f}'}) | "
                   f"{_mib(st['machine_per_sandbox'], 2)} |")
    found = verdict(result)
    if found:
        top = med["steps"][str(max(steps))]
        out += ["", f"Target (issue 21): the daemon's growth per idle sandbox at most "
                f"{_mib(result['target_daemon_bytes_per_sandbox'], 1)}: **{found}** "
                f"({_mib(top['daemon_rss_per_sandbox'], 3)} at {max(steps)})."]
    reserve = (result.get("engine") or {}).get("reserve") or {}
    zero = med["points"]["0"]
    out += ["", f"The engine's reserve keeps {reserve.get('size', '?')} sandboxes started "
            "ahead for the configuration used most (here this benchmark's); while they "
            f"wait, their processes (init, slirp4netns) hold {_mib(zero['reserve_pss'], 2)} "
            "PSS in all (column \"reserve waiting\"), counted in every row, since it "
            "refills after each take."]
    if not result.get("fresh_engine") and result["rounds"] > 1:
        out += ["", "These rounds ran on one engine: after the first, the daemon starts "
                "from the memory the earlier rounds left it (it does not give it back), "
                "which understates its growth; `--fresh-engine` restarts it per round."]
    return out


def render_markdown(result: dict[str, Any]) -> str:
    machine, engine = result["machine"], result.get("engine") or {}
    mem = (machine.get("memory") or "").removesuffix(" kB")
    fresh = " --fresh-engine" if result.get("fresh_engine") else ""
    lines = [f"# {title(result['steps'])}", "",
             f"Measured {result['started']} with `python -m benchmarks.scale --sandboxes "
             f"{','.join(map(str, result['steps']))} --rounds {result['rounds']}{fresh}`: "
             f"medians of "
             f"{result['rounds']} rounds (see the module docstring for how). Memory from "
             "`/proc/<pid>/smaps_rollup` of every process under the engine's pause process; "
             "MiB = 2^20 bytes.", "",
             "| machine | |", "|---|---|",
             f"| kernel | {machine.get('kernel')} ({machine.get('arch')}) |",
             f"| CPU | {machine.get('cpu_model')}, {machine.get('cores')} cores |",
             f"| memory | {_mib(int(mem.split()[0]) * 1024) if mem else '?'} |",
             f"| engine | {engine.get('version')}, runtime {engine.get('runtime')}, "
             f"user namespace {engine.get('userns_mode')}, open files (soft/hard) "
             f"{engine.get('open_files')} |", "",
             *([f"Host settings: {result['conditions']}", ""] if result.get("conditions")
               else []),
             *section(result)]
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "scale.md").write_text(render_markdown(result))
    return [out / "scale.json", out / "scale.md"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sandboxes", default="500",
                        help="the steps, comma-separated (one number N: 50 and N)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fresh-engine", action="store_true",
                        help="stop the engine before each round (ends all its sandboxes)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    try:
        steps = [int(n) for n in args.sandboxes.split(",")]
    except ValueError:
        steps = []
    if not steps or min(steps) < 1 or args.rounds < 1:
        parser.error("--sandboxes takes numbers >= 1, --rounds a number >= 1")
    result = run(steps_for(steps[0]) if len(steps) == 1 else steps, args.rounds,
                 args.fresh_engine, progress=lambda m: print(m, file=sys.stderr, flush=True))
    print("\n".join([*section(result), *(f"wrote {p}" for p in write(result, args.out))]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
