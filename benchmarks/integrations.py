"""``python -m benchmarks.integrations``: a framework's first sandbox and its later ones.

What a user of each framework waits for before the first command of a task or an agent
can run, through the framework's own interface (the real package from PyPI, in the
scratch environments the integration tests make, with this checkout of hutch installed):

- inspect_ai: ``sample_init`` of the ``hutch`` sandbox environment (found through its entry
  point), then ``sample_cleanup``; and, as the peer in the same run, inspect's own ``local``
  environment (a directory on the host: no isolation at all);
- OpenAI Agents SDK: ``HutchSandboxClient.create`` + ``session.start()``, then ``delete``;
- smolagents: ``HutchExecutor()`` (a sandbox and its Python kernel), then ``cleanup()``;
- deepagents: ``HutchSandbox.create()``, then ``close()``;
- MCP: the ``create_sandbox`` tool of ``hutch mcp`` over stdio, through the ``mcp``
  SDK's own client.

Each driver times its first sandbox (in a new process: the SDK connects, the app is made)
and ``--runs`` later ones.  Results go to ``benchmarks/results/integrations.md`` and
``integrations.json``.  A framework whose environment cannot be made (no registry) is
reported as skipped, not timed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]

_PRELUDE = "import asyncio, json, os, sys, time\nRUNS = int(sys.argv[1])\ntimes = []\n"
_REPORT = "\nprint(json.dumps(times))\n"

_INSPECT = """
from inspect_ai.util._sandbox.registry import registry_find_sandboxenv

async def main():
    env_type = registry_find_sandboxenv("PROVIDER")
    await env_type.task_init("bench", None)
    for _ in range(RUNS + 1):
        began = time.monotonic()
        envs = await env_type.sample_init("bench", None, {})
        times.append(time.monotonic() - began)
        await env_type.sample_cleanup("bench", None, envs, False)
    await env_type.task_cleanup("bench", None, True)

asyncio.run(main())
"""

#: name -> (scratch environment, its packages, driver: prints a JSON list of seconds)
DRIVERS: dict[str, tuple[str, list[str], str]] = {
    "inspect_ai": ("inspect-ai", ["inspect_ai"], _INSPECT.replace("PROVIDER", "hutch")),
    # the peer: inspect's own `local` environment, which isolates nothing (no container)
    "inspect_ai local (peer)": ("inspect-ai", ["inspect_ai"],
                                _INSPECT.replace("PROVIDER", "local")),
    "openai-agents": ("openai-agents-native", ["openai-agents"], """
from hutch.integrations.openai_agents import HutchSandboxClient

async def main():
    client = HutchSandboxClient()
    for _ in range(RUNS + 1):
        began = time.monotonic()
        session = await client.create()
        await session.start()
        times.append(time.monotonic() - began)
        await client.delete(session)

asyncio.run(main())
"""),
    "smolagents": ("smolagents", ["smolagents"], """
from hutch.integrations.smolagents import HutchExecutor

for _ in range(RUNS + 1):
    began = time.monotonic()
    executor = HutchExecutor()
    times.append(time.monotonic() - began)
    executor.cleanup()
"""),
    "deepagents": ("deepagents", ["deepagents"], """
from hutch.integrations.langchain import HutchSandbox

for _ in range(RUNS + 1):
    began = time.monotonic()
    backend = HutchSandbox.create(timeout=120)
    times.append(time.monotonic() - began)
    backend.close()
"""),
    "mcp": ("mcp", ["mcp>=2.3,<3"], """
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

async def main():
    # (the mcp client passes on only HOME, PATH and a few more: the engine's dirs too)
    server = StdioServerParameters(command=sys.executable, args=["-m", "hutch", "mcp"],
                                   env=dict(os.environ))
    async with stdio_client(server) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            for _ in range(RUNS + 1):
                began = time.monotonic()
                made = await session.call_tool("create_sandbox", {})
                times.append(time.monotonic() - began)
                sandbox_id = json.loads(made.content[0].text)["sandbox_id"]
                await session.call_tool("terminate_sandbox", {"sandbox_id": sandbox_id})

asyncio.run(main())
"""),
}


def _environment(name: str, packages: list[str]) -> Path | None:
    """The scratch environment the integration tests use (made if missing)."""
    sys.path.insert(0, str(ROOT))
    import pytest

    from tests.integration import scratch

    try:
        return scratch.venv(name, packages, with_hutch=True)
    except pytest.skip.Exception:
        return None


def measure(framework: str, runs: int) -> dict[str, Any]:
    venv, packages, body = DRIVERS[framework]
    python = _environment(venv, packages)
    if python is None:
        return {"skipped": "the package index is unreachable"}
    with tempfile.TemporaryDirectory() as tmp:
        program = Path(tmp) / "drive.py"
        program.write_text(_PRELUDE + body + _REPORT)
        done = subprocess.run([str(python), str(program), str(runs)], capture_output=True,
                              text=True, timeout=900, cwd=tmp)
    if done.returncode:
        raise RuntimeError(f"{framework}: {done.stderr[-2000:]}")
    seconds: list[float] = json.loads(done.stdout.strip().splitlines()[-1])
    later = seconds[1:]
    return {"first_ms": seconds[0] * 1000,
            "later_median_ms": statistics.median(later) * 1000 if later else None,
            "later_min_ms": min(later) * 1000 if later else None,
            "later_max_ms": max(later) * 1000 if later else None, "runs": len(later)}


def write(results: dict[str, dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "integrations.json").write_text(json.dumps(results, indent=1))
    lines = ["# A framework's first sandbox and its later ones", "",
             "`python -m benchmarks.integrations`: through each framework's own interface "
             "(docs/integrations.md), on this machine, the engine already running; the first "
             "in a new process (a cold engine adds its own start). inspect's `local` "
             "environment, measured in the same run, isolates nothing: the peer.", "",
             "| framework | first | later (median) | min | max | runs |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} | | | | |")
            continue
        lines.append(f"| {name} | {r['first_ms']:.1f} ms | **{r['later_median_ms']:.1f} ms** "
                     f"| {r['later_min_ms']:.1f} ms | {r['later_max_ms']:.1f} ms | "
                     f"{r['runs']} |")
    (out / "integrations.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.integrations")
    parser.add_argument("--runs", type=int, default=5, help="later sandboxes per framework")
    parser.add_argument("--only", choices=sorted(DRIVERS), action="append")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = {name: measure(name, args.runs) for name in args.only or DRIVERS}
    write(results, args.out)
    for name, r in results.items():
        print(name, r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
