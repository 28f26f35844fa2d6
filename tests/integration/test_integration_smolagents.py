"""hutch's smolagents executor (:mod:`hutch.integrations.smolagents`), with smolagents from
PyPI in a scratch environment: a ``CodeAgent`` whose steps come from a fake model object (a
``Model`` that returns fixed code blocks), so no LLM is involved."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.integration import scratch

AGENT = r'''
import time
from importlib.metadata import entry_points

from smolagents import CodeAgent, tool
from smolagents.memory import ActionStep
from smolagents.models import ChatMessage, MessageRole, Model

from hutch.integrations.smolagents import HutchExecutor

STEPS = [
    "Thought: keep some state.\n<code>\nimport math\nx = seed * 4 + 1\nprint('x is', x)\n</code>",
    "Thought: this one fails.\n<code>\n1 / 0\n</code>",
    "Thought: use the state and the tool.\n<code>\ny = double(x)\nprint('y is', y)\ny\n</code>",
    "Thought: done.\n<code>\nfinal_answer({'x': x, 'y': y, 'root': math.isqrt(y)})\n</code>",
]


class FakeModel(Model):
    """smolagents' model interface, answering each step with the next fixed code block."""

    def __init__(self):
        super().__init__(model_id="fake")
        self.calls = 0

    def generate(self, messages, stop_sequences=None, response_format=None,
                 tools_to_call_from=None, **kwargs):
        self.calls += 1
        return ChatMessage(role=MessageRole.ASSISTANT, content=STEPS[self.calls - 1])


@tool
def double(n: int) -> int:
    """Twice a number.

    Args:
        n: the number
    """
    return 2 * n


print("entry point", entry_points(group="smolagents.executors")["hutch"].load() is HutchExecutor)
began = time.monotonic()
executor = HutchExecutor()
print(f"time executor 1 {time.monotonic() - began:.3f}")
sandbox = executor.sandbox
agent = CodeAgent(tools=[double], model=FakeModel(), executor=executor, max_steps=6,
                  verbosity_level=0)
began = time.monotonic()
answer = agent.run("Compute things.", additional_args={"seed": 5})
print(f"time run {time.monotonic() - began:.3f}")
print("answer", answer)
steps = [s for s in agent.memory.steps if isinstance(s, ActionStep)]
print("steps", len(steps))
print("state kept", "x is 21" in steps[0].observations, "y is 42" in steps[2].observations)
print("last output", "Last output from code snippet:\n42" in steps[2].observations)
print("error", type(steps[1].error).__name__, "ZeroDivisionError" in str(steps[1].error))
print("final", steps[3].is_final_answer)
agent.cleanup()
print("cleaned", executor.sandbox is None, sandbox.poll() is not None)

began = time.monotonic()
again = HutchExecutor(timeout=3)
print(f"time executor 2 {time.monotonic() - began:.3f}")
began = time.monotonic()
again.run_code_raise_errors("kept = 1")
print(f"time code {time.monotonic() - began:.3f}")
out = again.run_code_raise_errors("import os, subprocess\nsubprocess.run(['echo', 'from fd 1'])\n"
                                  "print('printed')\nkept + 1")
print("stray", "from fd 1" in out.logs, "printed" in out.logs, out.output)
try:
    again.run_code_raise_errors("import time\ntime.sleep(30)")
except Exception as e:
    print("timeout", type(e).__name__, "variables are lost" in str(e))
out = again.run_code_raise_errors("'kept' in globals()")
print("after restart", out.output)
again.cleanup()
'''


def test_a_code_agent_runs_its_steps_in_a_hutch_sandbox(engine: dict[str, Any],
                                                        tmp_path: Path) -> None:
    """State between steps, a tool sent as source, variables sent by ``additional_args``,
    an error observed by the agent, ``final_answer`` ending the run with its value; output
    of child processes, a timeout that loses the state; the ``smolagents.executors`` entry
    point naming the executor."""
    python = scratch.venv("smolagents", ["smolagents"], with_hutch=True)
    env = {k: v for k, v in os.environ.items() if k != "HUTCH_AS_MODAL"}
    done = scratch.drive(python, AGENT, tmp_path, env=env, name="agent.py")
    print(done.stdout)  # (the timings, for the log)
    ours = ("entry", "answer", "steps", "state", "last", "error", "final", "cleaned", "stray",
            "timeout", "after")  # (smolagents' loggers print to stdout too)
    assert [line for line in done.stdout.splitlines() if line.startswith(ours)] == [
        "entry point True", "answer {'x': 21, 'y': 42, 'root': 6}", "steps 4",
        "state kept True True", "last output True", "error AgentExecutionError True", "final True",
        "cleaned True True", "stray True True 2", "timeout AgentError True",
        "after restart False"]
