"""Agent frameworks' Modal backends, installed from PyPI, driven through their public APIs
without an LLM, with ``HUTCH_AS_MODAL=1``: their own ``import modal`` gets hutch."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import hutch
from tests.integration import scratch

AGENTS_SDK = """
import asyncio, io
from pathlib import Path

import modal
from agents.extensions.sandbox.modal import (
    ModalImageSelector, ModalSandboxClient, ModalSandboxClientOptions)


async def main():
    # (its default image is python:3.14-slim from Docker Hub: the engine's default here)
    client = ModalSandboxClient(image=ModalImageSelector.from_image(modal.Image.debian_slim()))
    session = await client.create(options=ModalSandboxClientOptions(app_name="agents-sdk"))
    try:
        await session.start()
        result = await session.exec("echo hello && pwd")
        print("exec", result.exit_code, result.stdout.decode().split())
        await session.write(Path("notes/a.txt"), io.BytesIO(b"from the agent"))
        print("read", (await session.read(Path("notes/a.txt"))).read().decode())
        print("running", await session.running())
        print("ls", [e.path for e in await session.ls(Path("notes"))])
        archive = (await session.persist_workspace()).read()
        await session.exec("rm -rf notes")
        await session.hydrate_workspace(io.BytesIO(archive))
        print("restored", (await session.read(Path("notes/a.txt"))).read().decode())
    finally:
        await client.delete(session)
    print("after delete", await session.running())


asyncio.run(main())
"""


def _drive(python: Path, source: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``source`` with the scratch environment's Python, ``import modal`` -> hutch."""
    return scratch.drive(python, source, tmp_path, env={**os.environ, "HUTCH_AS_MODAL": "1"})


def test_the_openai_agents_sdk_modal_backend(engine: dict[str, Any], tmp_path: Path) -> None:
    python = scratch.venv("openai-agents", ["openai-agents"], with_hutch=True)
    done = _drive(python, AGENTS_SDK, tmp_path)
    assert done.stdout.splitlines() == [
        "exec 0 ['hello', '/workspace']", "read from the agent", "running True",
        "ls ['/workspace/notes/a.txt']", "restored from the agent", "after delete False"]


def test_the_openai_agents_sdk_persists_workspaces_as_snapshots(
        engine: dict[str, Any], tmp_path: Path) -> None:
    """Its ``snapshot_filesystem`` and ``snapshot_directory`` persistence modes use hutch's
    snapshots (their envelope names a snapshot image, not a tar) and restore from them."""
    python = scratch.venv("openai-agents", ["openai-agents"], with_hutch=True)
    done = _drive(python, AGENTS_SDK_SNAPSHOTS, tmp_path)
    assert done.stdout.splitlines() == [
        "snapshot_filesystem ref snapshot_filesystem",
        "snapshot_filesystem restored kept by snapshot_filesystem",
        "snapshot_directory ref snapshot_directory",
        "snapshot_directory restored kept by snapshot_directory"]


def test_the_openai_agents_sdk_tty_session(engine: dict[str, Any], tmp_path: Path) -> None:
    """Its ``pty_exec_start(tty=True)`` runs ``exec(pty=True)``: a REPL on a terminal, typed
    into with ``pty_write_stdin`` as its model would."""
    python = scratch.venv("openai-agents", ["openai-agents"], with_hutch=True)
    done = _drive(python, AGENTS_SDK_TTY, tmp_path)
    assert done.stdout.splitlines() == ["supports True", "prompt True", "repl True", "exit 3"]


AGENTS_SDK_TTY = r"""
import asyncio

import modal
from agents.extensions.sandbox.modal import (
    ModalImageSelector, ModalSandboxClient, ModalSandboxClientOptions)


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
    client = ModalSandboxClient(image=ModalImageSelector.from_image(modal.Image.debian_slim()))
    session = await client.create(options=ModalSandboxClientOptions(app_name="agents-tty"))
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
    finally:
        await client.delete(session)


asyncio.run(main())
"""


AGENTS_SDK_SNAPSHOTS = r"""
import asyncio, io, json, sys
from pathlib import Path

import modal
from agents.extensions.sandbox.modal import (
    ModalImageSelector, ModalSandboxClient, ModalSandboxClientOptions)


async def main(mode):
    client = ModalSandboxClient(image=ModalImageSelector.from_image(modal.Image.debian_slim()))
    session = await client.create(options=ModalSandboxClientOptions(
        app_name="agents-snapshots", workspace_persistence=mode))
    try:
        await session.start()
        await session.write(Path("notes/a.txt"), io.BytesIO(b"kept by " + mode.encode()))
        archive = (await session.persist_workspace()).read()
        start = archive.index(b"{")  # past the envelope's magic: not a tar
        print(mode, "ref", json.loads(archive[start:])["workspace_persistence"])
        await session.exec("rm -rf notes")
        await session.hydrate_workspace(io.BytesIO(archive))
        print(mode, "restored", (await session.read(Path("notes/a.txt"))).read().decode())
    finally:
        await client.delete(session)


for mode in ("snapshot_filesystem", "snapshot_directory"):
    asyncio.run(main(mode))
"""


SWE_REX = """
import asyncio

import modal
from swerex.deployment.modal import ModalDeployment
from swerex.runtime.abstract import BashAction, Command, CreateBashSessionRequest


async def main():
    print("modal is", modal.__name__)
    image = modal.Image.debian_slim().pip_install("swe-rex")
    deployment = ModalDeployment(image=image, startup_timeout=180, install_pipx=False)
    await deployment.start()
    try:
        print("alive", (await deployment.is_alive()).is_alive)
        result = await deployment.runtime.execute(Command(command=["echo", "hi from swe-rex"]))
        print("execute", result.exit_code, result.stdout.strip())
        await deployment.runtime.create_session(CreateBashSessionRequest())
        await deployment.runtime.run_in_session(BashAction(command="export X=42"))
        out = await deployment.runtime.run_in_session(BashAction(command="echo $X"))
        print("session", out.output.strip())
        sandbox_id = deployment.sandbox.object_id
    finally:
        await deployment.stop()  # (swe-rex 1.4 leaves a running sandbox running: as on Modal)
    print("sandbox", sandbox_id)


asyncio.run(main())
"""


def test_swe_rex_modal_deployment_beside_a_real_modal(engine: dict[str, Any],
                                                      tmp_path: Path) -> None:
    """swe-rex[modal] installs Modal's real client; HUTCH_AS_MODAL=1 wins over it, and
    without it the real one is what ``import modal`` gives."""
    python = scratch.venv("swe-rex", ["swe-rex[modal]"], with_hutch=True)
    done = _drive(python, SWE_REX, tmp_path)
    ours = [line for line in done.stdout.splitlines()  # (swe-rex logs to stdout too)
            if line.split(" ")[0] in ("modal", "alive", "execute", "session", "sandbox")]
    hutch.Sandbox.from_id(ours[-1].split()[1]).terminate()
    assert ours[:-1] == ["modal is hutch.modal", "alive True", "execute 0 hi from swe-rex",
                         "session 42"]
    real = subprocess.run([str(python), "-c", "import modal; print(modal.__name__, "
                           "modal.__file__)"], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "HUTCH_AS_MODAL"})
    assert real.stdout.startswith("modal ") and "site-packages/modal/" in real.stdout
