"""inspect_ai's ``hutch`` sandbox environment, installed from PyPI with this checkout as a
wheel, driven through inspect's own API with no model (``mockllm``): inspect's sandbox
conformance suite, an eval whose scorer runs code in the sandbox, a Dockerfile
configuration, and the times of a first sandbox and of later ones."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from tests.integration import scratch

SELF_CHECK = """
import asyncio, os, time

from inspect_ai.util._sandbox import self_check
from inspect_ai.util._sandbox.registry import registry_find_sandboxenv


async def main():
    env_type = registry_find_sandboxenv("hutch")  # found through the entry point
    print("type", env_type.__name__)
    started = time.monotonic()
    await env_type.task_init("self-check", None)
    print(f"time task-init {time.monotonic() - started:.3f}")
    started = time.monotonic()
    envs = await env_type.sample_init("self-check", None, {})
    print(f"time first-sandbox {time.monotonic() - started:.3f}")
    env = envs["default"]
    try:
        for name in self_check.__all__:
            try:
                await getattr(self_check, name)(env)
                print("check", name, "ok")
            except BaseException as ex:
                print("check", name, "FAIL", repr(ex)[:300].replace("\\n", " "))
        conn = await env.connection()
        print("connection", conn.type, conn.command.split()[:2])
    finally:
        await env_type.sample_cleanup("self-check", None, envs, False)
    later = []
    for _ in range(5):
        started = time.monotonic()
        envs = await env_type.sample_init("self-check", None, {})
        later.append(time.monotonic() - started)
        await env_type.sample_cleanup("self-check", None, envs, False)
    print("time later-sandboxes " + " ".join(f"{t:.3f}" for t in later))
    await env_type.task_cleanup("self-check", None, True)

    os.environ["HUTCH_INSPECT_WARM_POOL"] = "2"  # a warm pool per image for the task
    await env_type.task_init("pooled", None)
    [pool] = env_type._pools["pooled"]
    await pool.wait_ready.aio(timeout=120)
    pooled = []
    for _ in range(5):
        started = time.monotonic()
        envs = await env_type.sample_init("pooled", None, {})
        pooled.append(time.monotonic() - started)
        assert (await envs["default"].exec(["pwd"])).stdout.strip() == "/"
        await env_type.sample_cleanup("pooled", None, envs, False)
        await pool.wait_ready.aio(timeout=120)
    print("time pooled-sandboxes " + " ".join(f"{t:.3f}" for t in pooled))
    print("pool taken", (await pool.stats.aio())["taken"])
    await env_type.task_cleanup("pooled", None, True)


asyncio.run(main())
"""

EVAL = """
import sys

from inspect_ai import Task, eval
from inspect_ai.dataset import Sample
from inspect_ai.scorer import CORRECT, INCORRECT, Score, Target, accuracy, scorer
from inspect_ai.solver import Generate, TaskState, solver
from inspect_ai.util import sandbox


@solver
def writes_a_program():
    # (no model call: mockllm's token count needs tiktoken's file from the internet)
    async def solve(state: TaskState, generate: Generate) -> TaskState:
        await sandbox().write_file("work/answer.py", "print(sum(range(int(input()))))")
        return state
    return solve


@scorer(metrics=[accuracy()])
def runs_in_sandbox():
    async def score(state: TaskState, target: Target) -> Score:
        result = await sandbox().exec(["python3", "work/answer.py"], input="10\\n")
        where = await sandbox().exec(["sh", "-c", "cat /etc/os-release; echo $MARK; pwd"])
        value = CORRECT if result.stdout.strip() == target.text else INCORRECT
        return Score(value=value, explanation=result.stdout + result.stderr + where.stdout)
    return score


config = sys.argv[1] if len(sys.argv) > 1 else None
task = Task(dataset=[Sample(input="sum 0..9", target="45"), Sample(input="again", target="45")],
            solver=[writes_a_program()], scorer=runs_in_sandbox(),
            sandbox=("hutch", config) if config else "hutch")
log = eval(task, model="mockllm/model", log_dir="logs", display="none")[0]
print("status", log.status, log.error.message if log.error else "")
print("accuracy", log.results.scores[0].metrics["accuracy"].value)
for sample in log.samples:
    print("explanation", repr(sample.scores["runs_in_sandbox"].explanation))
"""


def _drive(python: Path, source: str, tmp_path: Path,
           *args: str) -> subprocess.CompletedProcess[str]:
    """Runs ``source`` with the scratch environment's Python, in ``tmp_path``."""
    return scratch.drive(python, source, tmp_path, *args)


def test_inspect_self_check_passes(engine: dict[str, Any], tmp_path: Path) -> None:
    """Every check of inspect's conformance suite passes against a hutch sandbox."""
    python = scratch.venv("inspect-ai", ["inspect_ai"], with_hutch=True)
    out = _drive(python, SELF_CHECK, tmp_path).stdout
    print(out)  # (the timings, for benchmarks/)
    lines = out.splitlines()
    assert "type HutchSandboxEnvironment" in lines
    checks = [line for line in lines if line.startswith("check ")]
    assert len(checks) >= 40, out
    assert [line for line in checks if not line.endswith(" ok")] == []
    assert "connection hutch ['hutch', 'shell']" in lines
    assert "pool taken 5" in lines


def test_inspect_eval_scores_code_run_in_the_sandbox(engine: dict[str, Any],
                                                     tmp_path: Path) -> None:
    """``eval(task, sandbox="hutch")``: the solver writes a program into each sample's
    sandbox, the scorer runs it there and scores its output."""
    python = scratch.venv("inspect-ai", ["inspect_ai"], with_hutch=True)
    out = _drive(python, EVAL, tmp_path).stdout
    lines = out.splitlines()
    assert lines[:2] == ["status success ", "accuracy 1.0"], out
    assert all("Debian" in line for line in lines[2:]) and len(lines) == 4, out


def test_inspect_eval_with_a_dockerfile(engine: dict[str, Any], tmp_path: Path) -> None:
    """A Dockerfile configuration builds the sample's image (its ``ENV`` and ``WORKDIR``
    apply in the sandbox: relative paths land in the ``WORKDIR``)."""
    python = scratch.venv("inspect-ai", ["inspect_ai"], with_hutch=True)
    (tmp_path / "Dockerfile").write_text(
        f"FROM {engine['default_image']}\nENV MARK=from-the-dockerfile\nWORKDIR /srv/task\n")
    out = _drive(python, EVAL, tmp_path, "Dockerfile").stdout
    lines = out.splitlines()
    assert lines[:2] == ["status success ", "accuracy 1.0"], out
    assert all("from-the-dockerfile" in line and "/srv/task" in line for line in lines[2:]), out
