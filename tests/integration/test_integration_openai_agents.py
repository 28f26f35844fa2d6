"""hutch's own OpenAI Agents SDK backend (:mod:`hutch.integrations.openai_agents`), with the
SDK from PyPI in a scratch environment, driven through its public session API without an
LLM (no ``HUTCH_AS_MODAL``: nothing here goes through the Modal shim)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.integration import scratch

PACKAGES = ["openai-agents"]


def _drive(source: str, tmp_path: Path) -> list[str]:
    python = scratch.venv("openai-agents-native", PACKAGES, with_hutch=True)
    env = {k: v for k, v in os.environ.items() if k != "HUTCH_AS_MODAL"}
    done = scratch.drive(python, source, tmp_path, env=env)
    print(done.stdout)  # (the timings, for the log)
    return [line for line in done.stdout.splitlines() if not line.startswith("time ")]


SESSION = r"""
import asyncio, io, sys, time
from pathlib import Path

from agents.sandbox import SandboxRunConfig
from agents.sandbox.errors import WorkspaceReadNotFoundError
from hutch.integrations.openai_agents import (
    HutchSandboxClient, HutchSandboxClientOptions, HutchSandboxSession)


async def main():
    client = HutchSandboxClient()
    config = SandboxRunConfig(client=client, options=HutchSandboxClientOptions(
        app_name="agents-native", workspace_persistence=sys.argv[1]))
    print("config", type(config.client).__name__)
    for n in (1, 2):  # (the first sandbox of the process, then a later one)
        began = time.monotonic()
        session = await client.create(options=config.options)
        await session.start()
        print(f"time session {n} {time.monotonic() - began:.3f}")
        await client.delete(session)
    session = await client.create(options=config.options)
    try:
        await session.start()
        print("inner", isinstance(session._inner, HutchSandboxSession))
        result = await session.exec("echo hello && pwd")
        print("exec", result.exit_code, result.stdout.decode().split())
        result = await session.exec("id -un", user="nobody")
        print("user", result.exit_code, result.stdout.decode().strip())
        await session.write(Path("notes/a.txt"), io.BytesIO(b"from the agent"))
        print("read", (await session.read(Path("notes/a.txt"))).read().decode())
        print("running", await session.running())
        print("ls", [e.path for e in await session.ls(Path("notes"))])
        began = time.monotonic()
        archive = (await session.persist_workspace()).read()
        print(f"time persist {time.monotonic() - began:.3f}")
        print("envelope", archive.startswith(b"HUTCH_WORKSPACE_SNAPSHOT_V1")
              if sys.argv[1] != "tar" else "tar")
        await session.exec("rm -rf notes && echo later > b.txt")
        began = time.monotonic()
        await session.hydrate_workspace(io.BytesIO(archive))
        print(f"time hydrate {time.monotonic() - began:.3f}")
        print("restored", (await session.read(Path("notes/a.txt"))).read().decode())
        gone = await session.exec("test -e b.txt")
        print("later file gone", gone.exit_code != 0)
        try:
            await session.read(Path("missing.txt"))
        except WorkspaceReadNotFoundError:
            print("missing raises WorkspaceReadNotFoundError")
    finally:
        await client.delete(session)
    print("after delete", await session.running())


asyncio.run(main())
"""


def _expected(mode: str) -> list[str]:
    return ["config HutchSandboxClient", "inner True", "exec 0 ['hello', '/workspace']",
            "user 0 nobody", "read from the agent", "running True",
            "ls ['/workspace/notes/a.txt']", f"envelope {'tar' if mode == 'tar' else True}",
            "restored from the agent",
            # (a tar is extracted over the workspace, as the SDK's other backends do; a
            # snapshot replaces it)
            f"later file gone {mode != 'tar'}",
            "missing raises WorkspaceReadNotFoundError", "after delete False"]


def test_a_session_execs_writes_reads_and_persists_as_a_directory_snapshot(
        engine: dict[str, Any], tmp_path: Path) -> None:
    """The default mode: the workspace kept as an image of the directory, mounted back."""
    assert _drive(SESSION.replace("sys.argv[1]", '"snapshot_directory"'), tmp_path) == \
        _expected("snapshot_directory")


def test_a_session_persists_as_a_filesystem_snapshot_and_as_a_tar(
        engine: dict[str, Any], tmp_path: Path) -> None:
    for mode in ("snapshot_filesystem", "tar"):
        assert _drive(SESSION.replace("sys.argv[1]", repr(mode)), tmp_path) == _expected(mode)


RESUME = r"""
import asyncio, io
from pathlib import Path

from hutch.integrations.openai_agents import HutchSandboxClient


async def main():
    client = HutchSandboxClient()
    session = await client.create()
    await session.start()
    await session.write(Path("kept.txt"), io.BytesIO(b"still here"))
    payload = client.serialize_session_state(session.state)
    again = await client.resume(client.deserialize_session_state(payload))
    await again.start()
    print("same sandbox", again.state.sandbox_id == session.state.sandbox_id)
    print("resumed", (await again.read(Path("kept.txt"))).read().decode())
    await client.delete(again)
    print("deleted", await again.running())


asyncio.run(main())
"""


def test_a_session_resumes_from_its_serialized_state(engine: dict[str, Any],
                                                     tmp_path: Path) -> None:
    assert _drive(RESUME, tmp_path) == ["same sandbox True", "resumed still here",
                                        "deleted False"]


PTY = r"""
import asyncio

from hutch.integrations.openai_agents import HutchSandboxClient


async def until(session, update, wanted):
    seen = update.output
    for _ in range(100):  # (each call waits for output up to its yield time)
        if wanted in seen or update.exit_code is not None:
            return seen, update
        update = await session.pty_write_stdin(session_id=update.process_id, chars="",
                                               yield_time_s=0.5)
        seen += update.output
    return seen, update


async def main():
    client = HutchSandboxClient()
    session = await client.create()
    try:
        await session.start()
        print("supports", session.supports_pty())
        update = await session.pty_exec_start("python3", "-i", shell=False, tty=True,
                                              yield_time_s=5)
        seen, update = await until(session, update, b">>> ")
        print("prompt", b">>> " in seen)
        update = await session.pty_write_stdin(
            session_id=update.process_id, chars="import os; x = 6 * 7\n", yield_time_s=1)
        update = await session.pty_write_stdin(
            session_id=update.process_id, chars="print(os.isatty(0), x)\n", yield_time_s=1)
        seen, update = await until(session, update, b"True 42")
        print("repl", b"True 42" in seen)
        update = await session.pty_write_stdin(session_id=update.process_id,
                                               chars="exit(3)\n", yield_time_s=2)
        seen, update = await until(session, update, b"never")
        print("exit", update.exit_code)
        update = await session.pty_exec_start("echo out; echo err >&2; exit 4",
                                              yield_time_s=5)
        seen, update = await until(session, update, b"never")
        print("plain", sorted(seen.split()), update.exit_code)
    finally:
        await client.delete(session)


asyncio.run(main())
"""


def test_a_session_runs_a_repl_on_a_terminal(engine: dict[str, Any], tmp_path: Path) -> None:
    """``pty_exec_start(tty=True)`` is ``exec(pty=True)``: typed into as the model would."""
    assert _drive(PTY, tmp_path) == ["supports True", "prompt True", "repl True", "exit 3",
                                     "plain [b'err', b'out'] 4"]


RUNNER = r"""
import asyncio, json

from agents import RunConfig, Runner
from agents.items import ModelResponse
from agents.models.interface import Model
from agents.run_config import SandboxRunConfig
from agents.sandbox.sandbox_agent import SandboxAgent
from agents.usage import Usage
from openai.types.responses import (
    ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText)

from hutch.integrations.openai_agents import HutchSandboxClient


class FakeModel(Model):
    # The model's two turns, fixed: a shell command in the sandbox, then an answer made of
    # what the command printed (read from the tool output the Runner sends back).
    async def get_response(self, system_instructions, input, *args, **kwargs):
        outputs = [item.get("output") for item in input
                   if isinstance(item, dict) and item.get("type") == "function_call_output"]
        if not outputs:
            call = ResponseFunctionToolCall(
                type="function_call", call_id="call-1", name="exec_command", id="fc-1",
                status="completed",
                arguments=json.dumps({"cmd": "echo $((6*7)) > answer.txt && cat answer.txt "
                                             "&& id -un"}))
            return ModelResponse(output=[call], usage=Usage(), response_id=None)
        text = "tool said: " + " ".join(str(o) for o in outputs).replace("\n", " ")
        message = ResponseOutputMessage(
            id="msg-1", type="message", role="assistant", status="completed",
            content=[ResponseOutputText(type="output_text", text=text, annotations=[])])
        return ModelResponse(output=[message], usage=Usage(), response_id=None)

    def stream_response(self, *args, **kwargs):
        raise RuntimeError("not streamed here")


async def main():
    agent = SandboxAgent(name="coder", instructions="Use the shell.", model=FakeModel())
    client = HutchSandboxClient()
    result = await Runner.run(agent, "What is six times seven?",
                              run_config=RunConfig(sandbox=SandboxRunConfig(client=client)))
    print("final has 42", "42" in result.final_output)
    print("final has root", "root" in result.final_output)


asyncio.run(main())
"""


def test_a_sandbox_agent_runs_through_the_runner(engine: dict[str, Any], tmp_path: Path) -> None:
    """``Runner.run`` with ``RunConfig(sandbox=SandboxRunConfig(client=HutchSandboxClient()))``:
    the SDK makes the session, gives the agent its shell tool, and the (fixed) model's
    command runs in a hutch sandbox."""
    assert _drive(RUNNER, tmp_path) == ["final has 42 True", "final has root True"]
