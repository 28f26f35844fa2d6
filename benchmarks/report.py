"""Writing the results: ``startup.json`` (everything), ``startup.md`` (tables), ``startup.png``.

The JSON is the source of truth (raw samples included, in seconds); the markdown and the
plot are rendered from the same dictionary, so they can be re-rendered from an old JSON
file (``render_markdown(json.load(...))``).  The plot needs matplotlib; without it the
report says so and the rest is still written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks import scale
from benchmarks.files import table as files_table
from benchmarks.images import by_image_table

SCENARIO_ORDER = ("startup", "exec")


def ms(seconds: float | None) -> str:
    """Seconds as a short millisecond string."""
    if seconds is None:
        return "—"
    value = seconds * 1000
    return f"{value:.0f} ms" if value >= 100 else f"{value:.1f} ms"


def ratios(scenario: dict[str, Any], reference: str = "hutch") -> dict[str, float | None]:
    """Median of ``reference`` divided by each other available contender's median."""
    peers = scenario["peers"]
    ref = peers.get(reference, {}).get("stats_s")
    out: dict[str, float | None] = {}
    for name, peer in peers.items():
        if name == reference:
            continue
        stats = peer.get("stats_s")
        out[name] = ref["median"] / stats["median"] if ref and stats else None
    return out


def _ratio_text(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 1:
        return f"{value:.2f}x (hutch slower)"
    return f"{value:.2f}x (hutch {1 / value:.1f}x faster)"


def _cell(value: object) -> str:
    """Text that cannot break a markdown table row."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _memory(text: str | None) -> str:
    parts = (text or "").split()
    if len(parts) == 2 and parts[0].isdigit() and parts[1] == "kB":
        return f"{int(parts[0]) / 2**20:.1f} GiB"
    return str(text)


def _machine_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    machine = results["machine"]
    engine = results.get("hutch_engine") or {}
    tools = machine.get("tools", {})
    cores = f"{machine.get('cores')} ({machine.get('cores_usable')} usable)"
    runtime = engine.get("runtime", "unknown (engine not reachable)")
    if engine.get("runtime_fallback_reason"):
        runtime += f" (fallback: {engine['runtime_fallback_reason']})"
    rootfs = results.get("rootfs") or {}
    return [
        ("kernel", f"{machine.get('kernel')} ({machine.get('arch')})"),
        ("OS", str(machine.get("os"))),
        ("CPU", str(machine.get("cpu_model"))),
        ("cores", cores),
        ("memory", _memory(machine.get("memory"))),
        ("cgroups", str(machine.get("cgroups"))),
        ("user", str(machine.get("user"))),
        ("hutch", f"{results.get('hutch_version')}, engine {engine.get('version', '?')}"),
        ("hutch runtime (GET /v1/engine)", runtime),
        ("hutch user namespace", str(engine.get("userns_mode", "?"))),
        ("crun", str(tools.get("crun"))),
        ("podman", str(tools.get("podman"))),
        ("bwrap", str(tools.get("bwrap"))),
        ("python", str(machine.get("python"))),
        ("rootfs", f"`{rootfs.get('image')}` layer `{str(rootfs.get('diff_id'))[:19]}…`"
                   if rootfs else "not found"),
    ]


def _scenario_table(scenario: dict[str, Any]) -> list[str]:
    lines = ["| contender | median | p10 | p90 | n | hutch ÷ contender | what runs |",
             "|---|---:|---:|---:|---:|---|---|"]
    ratio = ratios(scenario)
    for name, peer in scenario["peers"].items():
        stats = peer.get("stats_s")
        command = f"`{peer['command']}`" if peer.get("command") else ""
        if not stats:
            lines.append(f"| {name} | unavailable | | | | | {_cell(peer.get('reason'))} |")
            continue
        rel = "—" if name == "hutch" else _ratio_text(ratio.get(name))
        lines.append(f"| {name} | **{ms(stats['median'])}** | {ms(stats['p10'])} | "
                     f"{ms(stats['p90'])} | {stats['n']} | {rel} | {command} |")
    subs = []
    for name, peer in scenario["peers"].items():
        if not peer.get("stats_s"):
            continue
        for key, extra in peer.get("extras_s", {}).items():
            st = extra["stats"]
            subs.append(f"- {name} `{key}`: median {ms(st['median'])} "
                        f"(p10 {ms(st['p10'])}, p90 {ms(st['p90'])})")
    if subs:
        lines += ["", "Sub-timings, from the same start:", "", *subs]
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    """The human report: machine facts, one table per scenario, notes."""
    out = [
        "# hutch startup benchmark",
        "",
        f"Measured {results['started']} with `python -m benchmarks "
        f"{'--quick' if results.get('quick') else '--runs ' + str(results['runs'])}`: "
        f"{results['runs']} runs per contender "
        f"after {results['warmup']} warm-up, interleaved round-robin, each trial started "
        "once the machine is quiet (CPUs under 10% busy for 50 ms, or after 2 s). "
        "Every contender runs "
        "the same Debian root filesystem (the unpacked layer of hutch's default image, "
        "read-only for the peers). p10/p90 are the 10th/90th percentiles; "
        "\"hutch ÷ contender\" is the ratio of medians.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    out += [f"| {k} | {_cell(v)} |" for k, v in _machine_rows(results)]
    for key in SCENARIO_ORDER:
        scenario = results["scenarios"].get(key)
        if scenario is None:
            continue
        out += ["", f"## {scenario['title']}", "", scenario["description"], ""]
        out += _scenario_table(scenario)
    out += _concurrency_section(results.get("concurrency"))
    out += _files_images_section(results)
    out += _scale_section(results.get("scale"))
    notes = list(results.get("notes", []))
    for key in SCENARIO_ORDER:
        for name, peer in results["scenarios"].get(key, {}).get("peers", {}).items():
            notes += [f"{name}: {n}" for n in peer.get("notes", [])]
    if notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in dict.fromkeys(notes)]
    return "\n".join(out) + "\n"


def _files_images_section(results: dict[str, Any]) -> list[str]:
    out: list[str] = []
    files = results.get("files")
    if files:
        out += ["", "## Files into and out of a running sandbox", "",
                "Medians; hutch `copy_from_local`/`copy_to_local`, podman `podman cp` "
                "(details: [files.md](files.md)).", "", *files_table(files)]
    images = results.get("images")
    if images:
        out += ["", "## Images", "", "Medians (details: [images.md](images.md)).", "",
                "| figure | median | runs |", "|---|---:|---:|"]
        out += [f"| {name} | **{r['median_ms']:.1f} ms** | {r['runs']} |"
                for name, r in images.items()]
    by_image = results.get("images_by_image")
    if by_image:
        out += ["", "### Create → first output by image", "",
                f"Reserve emptied (images interleaved) and kept for each image in turn, "
                f"{by_image['runs']} runs each (details: [images.md](images.md)).", "",
                *by_image_table(by_image)]
    return out


def _scale_section(result: dict[str, Any] | None) -> list[str]:
    if not result:
        return []
    return ["", f"## {scale.title(result['steps'])}", "",
            f"Medians of {result['rounds']} round(s) (details: [scale.md](scale.md)).", "",
            *scale.section(result, heading="###")]


def _concurrency_section(conc: dict[str, Any] | None) -> list[str]:
    if not conc:
        return []
    out = ["", f"## {conc['n']} sandboxes at once", "",
           f"{conc['n']} idle sandboxes (`sleep infinity`) started concurrently, timed until "
           "all run; then the memory (PSS) that every process of the user gained, divided by "
           f"{conc['n']}: what one more idle sandbox costs (`benchmarks/concurrency.py`). "
           "\"hutch, after an exec\" also runs `exec true` in each sandbox (timed with the "
           "creates), so each has its zygote, kept for 30 s after its last command. "
           "\"crun, isolated as hutch\" is raw crun with what a hutch sandbox has beyond "
           "it, from the same parts: a network namespace, hutch's seccomp filter, "
           "slirp4netns and hutch's firewall loaded by `nft` (no cgroup, no id slice). "
           f"{conc['runs']} rounds per contender, alternating.", "",
           "| contender | all running: median | p10 | p90 | hutch ÷ contender "
           "| PSS per idle sandbox: median | hutch ÷ contender |",
           "|---|---:|---:|---:|---|---:|---|"]
    hutch = conc["peers"].get("hutch", {})
    for name, peer in conc["peers"].items():
        if not peer.get("available"):
            out.append(f"| {name} | unavailable: {peer.get('reason')} | | | | | |")
            continue
        t, m = peer["total_s"], peer["pss_per_sandbox_bytes"]
        t_ratio = m_ratio = "—"
        if not name.startswith("hutch") and hutch.get("available"):
            t_ratio = _ratio_text(hutch["total_s"]["median"] / t["median"])
            mem = hutch["pss_per_sandbox_bytes"]["median"] / m["median"] if m["median"] \
                else None
            m_ratio = "—" if not mem else f"{mem:.2f}x" + (
                " (hutch larger)" if mem >= 1 else f" (hutch {1 / mem:.1f}x smaller)")
        out.append(f"| {name} | **{t['median']:.2f} s** | {t['p10']:.2f} s | "
                   f"{t['p90']:.2f} s | {t_ratio} | **{m['median'] / 2**20:.2f} MiB** | "
                   f"{m_ratio} |")
    return out


def render_plot(results: dict[str, Any], path: Path) -> str | None:
    """Median dots with p10-p90 whiskers per scenario; returns why not, if it can't."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"matplotlib is not importable ({exc})"
    scenarios = [results["scenarios"][k] for k in SCENARIO_ORDER if k in results["scenarios"]]
    fig, axes = plt.subplots(len(scenarios), 1, figsize=(8, 2.2 + 1.6 * len(scenarios)),
                             squeeze=False)
    for ax, scenario in zip(axes[:, 0], scenarios, strict=True):
        rows = [(n, p["stats_s"]) for n, p in scenario["peers"].items() if p.get("stats_s")]
        rows.reverse()  # first contender on top
        for y, (name, st) in enumerate(rows):
            med, p10, p90 = (st[k] * 1000 for k in ("median", "p10", "p90"))
            color = "tab:orange" if name.startswith("hutch") else "tab:blue"
            ax.errorbar([med], [y], xerr=[[med - p10], [p90 - med]], fmt="o", color=color,
                        capsize=4, markersize=7)
            ax.annotate(f"{med:.1f} ms", (p90 * 1.08, y), va="center", fontsize=8)
        ax.set_yticks(range(len(rows)), [n for n, _ in rows])
        ax.set_ylim(-0.6, len(rows) - 0.4)
        if rows:
            ax.set_xlim(min(s["p10"] for _, s in rows) * 1000 / 1.6,
                        max(s["p90"] for _, s in rows) * 1000 * 2.2)
        ax.set_xscale("log")
        ax.set_xlabel("milliseconds (log scale; dot = median, whiskers = p10-p90)")
        ax.set_title(scenario["title"], fontsize=10)
        ax.grid(axis="x", which="both", alpha=0.3)
    machine = results["machine"]
    fig.suptitle(f"hutch startup — {machine.get('cpu_model')}, {machine.get('cores')} cores, "
                 f"kernel {machine.get('kernel')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def render_concurrency_plot(conc: dict[str, Any], path: Path) -> str | None:
    """Bars: time until N sandboxes run, and PSS per idle sandbox, per contender."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"matplotlib is not importable ({exc})"
    rows = [(n, p) for n, p in conc["peers"].items() if p.get("available")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 2.4 + 0.4 * len(rows)))
    names = [n for n, _ in rows]
    colors = ["tab:orange" if n.startswith("hutch") else "tab:blue" for n in names]
    times = [p["total_s"]["median"] for _, p in rows]
    memory = [p["pss_per_sandbox_bytes"]["median"] / 2**20 for _, p in rows]
    left.barh(names, times, color=colors)
    left.set_xlabel(f"seconds until {conc['n']} sandboxes run (median)")
    right.barh(names, memory, color=colors)
    right.set_xlabel("MiB (PSS) per idle sandbox (median)")
    for ax, values, unit in ((left, times, "s"), (right, memory, "MiB")):
        for y, v in enumerate(values):
            ax.annotate(f"{v:.2f} {unit}", (v, y), va="center", fontsize=8,
                        xytext=(3, 0), textcoords="offset points")
        ax.invert_yaxis()
        ax.set_xlim(0, max(values, default=1) * 1.35)
    fig.suptitle(f"{conc['n']} idle sandboxes at once", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def write_all(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write ``startup.json``, ``startup.md`` and (when possible) ``startup.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for scenario in results["scenarios"].values():
        scenario["ratios_hutch_over_peer"] = ratios(scenario)
    png = out_dir / "startup.png"
    why_not = render_plot(results, png)
    if why_not:
        results.setdefault("notes", []).append(f"no plot: {why_not}")
    extra = []
    if results.get("concurrency"):
        conc_png = out_dir / "concurrency.png"
        why = render_concurrency_plot(results["concurrency"], conc_png)
        if why:
            results.setdefault("notes", []).append(f"no concurrency plot: {why}")
        else:
            extra.append(conc_png)
    written = [out_dir / "startup.json", out_dir / "startup.md", *extra]
    written[0].write_text(json.dumps(results, indent=1) + "\n")
    written[1].write_text(render_markdown(results))
    return written + ([] if why_not else [png])
