"""inspect_ai's ``hutch`` sandbox environment, installed from PyPI with this checkout as a
wheel, driven through inspect's own API with no model (``mockllm``): inspect's sandbox
conformance suite, an eval whose scorer runs code in the sandbox, a Dockerfile
configuration, a compose file whose services reach each other by name, and the times of a
first sandbox and of later ones."""

from __future__ import annotations

import json
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


COMPOSE = """
networks:
  inner:
    internal: true
services:
  default:
    build: .
    depends_on:
      web: {condition: service_healthy}
  web:
    build: .
    hostname: www
    command: ["sh", "-c", "mkdir -p /srv && echo web-says-hi > /srv/index.html && cd /srv
              && exec python3 -m http.server 8000"]
    networks: [default, inner]
    healthcheck:
      test: ["CMD", "python3", "-c", "import urllib.request as u; u.urlopen('http://localhost:8000/')"]
      interval: 100ms
  sealed:
    build: .
    networks:
      inner:
        aliases: [sealed.internal]
  offline:
    build: .
    network_mode: none
"""

#: what a service reaches: GET http://HOST:8000/ for each argument, a connection out
PROBE = """
import json, os, socket, sys, urllib.request
found = {"interfaces": sorted(os.listdir("/sys/class/net"))}
for host in sys.argv[1:]:
    try:
        found[host] = urllib.request.urlopen(f"http://{host}:8000/", timeout=5).read().decode()
    except Exception as exc:
        found[host] = "failed " + type(exc).__name__
try:
    socket.create_connection(("1.1.1.1", 53), 3).close()
    found["outside"] = "open"
except OSError as exc:
    found["outside"] = "failed " + type(exc).__name__
print(json.dumps(found))
"""

COMPOSE_EVAL = """
import asyncio, json, sys, time

import hutch
from inspect_ai import Task, eval
from inspect_ai.dataset import Sample
from inspect_ai.scorer import CORRECT, Score, Target, accuracy, scorer
from inspect_ai.solver import Generate, TaskState, solver
from inspect_ai.util import sandbox
from inspect_ai.util._sandbox.registry import registry_find_sandboxenv

PROBE = sys.argv[1]


@solver
def nothing():
    async def solve(state: TaskState, generate: Generate) -> TaskState:
        return state
    return solve


@scorer(metrics=[accuracy()])
def what_each_service_reaches():
    async def score(state: TaskState, target: Target) -> Score:
        found = {}
        for service in ("default", "sealed", "offline"):
            result = await sandbox(service).exec(["python3", "-c", PROBE, "web", "www"])
            found[service] = json.loads(result.stdout) if result.success else result.stderr
        return Score(value=CORRECT, explanation=json.dumps(found))
    return score


task = Task(dataset=[Sample(input="one", target="x"), Sample(input="two", target="x")],
            solver=[nothing()], scorer=what_each_service_reaches(),
            sandbox=("hutch", "compose.yaml"))
log = eval(task, model="mockllm/model", log_dir="logs", display="none")[0]
print("status", log.status, log.error.message if log.error else "")
for sample in log.samples:
    print("found", sample.scores["what_each_service_reaches"].explanation)
print("networks left", [n.name for n in hutch.Network.list() if n.name.startswith("inspect-")])
print("sandboxes left", [s.object_id for s in hutch.Sandbox.list(tags={"inspect-sandbox": "1"})])


async def inspects():
    return [n for n in await hutch.Network.list.aio() if n.name.startswith("inspect-")]


async def times():
    env_type = registry_find_sandboxenv("hutch")
    await env_type.task_init("timing", "compose.yaml")
    starts, ends = [], []
    for _ in range(3):
        started = time.monotonic()
        envs = await env_type.sample_init("timing", "compose.yaml", {})
        starts.append(time.monotonic() - started)
        started = time.monotonic()
        await env_type.sample_cleanup("timing", "compose.yaml", envs, False)
        ends.append(time.monotonic() - started)
    print("time compose-sample " + " ".join(f"{t:.3f}" for t in starts))
    print("time compose-cleanup " + " ".join(f"{t:.3f}" for t in ends))
    # what an interrupted run leaves: task_cleanup ends it, networks included
    await env_type.sample_init("timing", "compose.yaml", {})
    print("networks made", len(await inspects()))
    await env_type.task_cleanup("timing", "compose.yaml", True)
    # inspect sandbox cleanup hutch ID: the sample of the sandbox ID, and its network
    envs = await env_type.sample_init("timing", "compose.yaml", {})
    other = await env_type.sample_init("timing", "compose.yaml", {})
    await env_type.cli_cleanup(envs["sealed"].sandbox.object_id)
    print("cleaned up", sorted([await e.sandbox.poll.aio() is not None for e in envs.values()]),
          sorted([await e.sandbox.poll.aio() is not None for e in other.values()]),
          len(await inspects()))
    await env_type.cli_cleanup(None)

asyncio.run(times())
print("networks left", [n.name for n in hutch.Network.list() if n.name.startswith("inspect-")])
print("sandboxes left", [s.object_id for s in hutch.Sandbox.list(tags={"inspect-sandbox": "1"})])
"""


def test_inspect_eval_with_compose_services_on_a_network(engine: dict[str, Any],
                                                         tmp_path: Path) -> None:
    """A compose file of four services: ``default`` fetches ``web`` (started first, and
    healthy) by its service name and its ``hostname``; ``sealed``, on an ``internal``
    network only, reaches ``web`` and not the outside; ``offline`` (``network_mode:
    none``) reaches nothing.  After the eval no network and no sandbox of it is left."""
    python = scratch.venv("inspect-ai", ["inspect_ai"], with_hutch=True)
    (tmp_path / "Dockerfile").write_text(f"FROM {engine['default_image']}\n")
    (tmp_path / "compose.yaml").write_text(COMPOSE)
    out = _drive(python, COMPOSE_EVAL, tmp_path, PROBE).stdout
    print(out)  # (the timings, for docs/)
    lines = out.splitlines()
    assert lines[0] == "status success ", out
    found = [json.loads(line.split(" ", 1)[1]) for line in lines if line.startswith("found ")]
    assert len(found) == 2, out
    for sample in found:
        default, sealed, offline = sample["default"], sample["sealed"], sample["offline"]
        assert default["web"] == default["www"] == "web-says-hi\n", sample
        assert "tap0" in default["interfaces"]  # its network is not internal: outbound too
        assert sealed["web"] == "web-says-hi\n", sample
        assert sealed["interfaces"] == ["eth0", "lo"] and sealed["outside"].startswith(
            "failed"), sample
        assert offline["interfaces"] == ["lo"], sample
        assert offline["web"].startswith("failed") and offline["outside"].startswith(
            "failed"), sample
    assert lines.count("networks left []") == 2, out
    assert lines.count("sandboxes left []") == 2, out
    # (one network per sample; a cleanup by a sandbox's id ends that one sample)
    assert "networks made 1" in lines, out
    assert "cleaned up [True, True, True, True] [False, False, False, False] 1" in lines, out
