"""The sandbox manager's lifecycle (hutch/engine/lifecycle/manager.py) without a container:
its launch seam starts the entrypoint as a host process, a thread records its exit code
as the pause process would, and the runtime is a fake.  What is tested is the manager's
own bookkeeping: the row's states and exit reasons (exited with its code, terminated 137,
timed out 124, failed), names, and that an ended sandbox leaves nothing live."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from hutch.api import exitcodes
from hutch.api.models import CreateSandboxRequest, ExecRequest
from hutch.engine.errors import AlreadyExists, Conflict
from hutch.engine.isolation.cgroups import CgroupHost
from hutch.engine.lifecycle.launch import LaunchPlan
from hutch.engine.lifecycle.manager import SandboxManager
from hutch.engine.runtime.spawn import spawn
from hutch.engine.storage.store import Store
from hutch.imagebuild.layout import Image

IMAGE = Image(ref="hutch/test", digest="sha256:" + "e" * 64,
              layer_dirs=[Path("/layers/" + "f" * 64)])


class FakeRuntime:
    """Deletes nothing, and runs an exec's process on the host (no fork server here)."""

    name = "fake"

    def __init__(self) -> None:
        self.deleted: list[str] = []

    async def delete(self, sandbox_id: str, force: bool = False) -> None:
        self.deleted.append(sandbox_id)

    async def exec(self, cid: str, process_json: Path, *, pid_file: Path, stdin: bool,
                   stdout: bool = True, stderr: bool = True, prefix: Any = ()) -> Any:
        process = json.loads(process_json.read_text())
        spawned = spawn(process["args"], stdin=stdin, stdout=stdout, stderr=stderr)
        pid_file.write_text(str(spawned.pid))
        return spawned


class FakeImages:
    async def resolve(self, ref: str | None) -> Image:
        return IMAGE


def _host_launch(exits: Path, fail: bool = False
                 ) -> Callable[[Any, LaunchPlan], Awaitable[tuple[int, trio.lowlevel.FdStream]]]:
    """Start the plan's entrypoint on the host; record its exit as the pause process does."""
    async def launch(runtime: Any, plan: LaunchPlan) -> tuple[int, trio.lowlevel.FdStream]:
        if fail:
            raise OSError("the runtime could not start it")
        plan.dirs.execs.mkdir(parents=True)  # (the bundle's, which execs write into)
        proc = subprocess.Popen(plan.argv, stdin=subprocess.DEVNULL)

        def reap() -> None:
            code = proc.wait()
            exits.mkdir(parents=True, exist_ok=True)
            (exits / str(proc.pid)).write_text(json.dumps({"code": code}))

        threading.Thread(target=reap, daemon=True).start()
        return proc.pid, trio.lowlevel.FdStream(os.open(os.devnull, os.O_WRONLY))

    return launch


async def _manager(tmp_path: Path, nursery: trio.Nursery, fail: bool = False) -> SandboxManager:
    runtime_dir = tmp_path / "run"
    runtime_dir.mkdir(exist_ok=True)
    manager = SandboxManager(
        store=Store(tmp_path / "state.db"), images=FakeImages(),  # type: ignore[arg-type]
        runtime=FakeRuntime(), data_dir=tmp_path / "data",  # type: ignore[arg-type]
        runtime_dir=runtime_dir, devpts_gid=False, nursery=nursery, cgroups=CgroupHost(version=2),
        userns_mode="single", user="no-such-user-for-slots")
    manager.launch = _host_launch(runtime_dir / "exits", fail)  # type: ignore[assignment]
    return manager


def _run(test: Callable[[SandboxManager], Awaitable[None]], tmp_path: Path,
         fail: bool = False) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            manager = await _manager(tmp_path, nursery, fail)
            with trio.fail_after(30):
                await test(manager)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_an_entrypoint_that_exits_is_recorded_with_its_code(tmp_path: Path) -> None:
    async def test(manager: SandboxManager) -> None:
        row = await manager.create(CreateSandboxRequest(entrypoint=["sh", "-c", "exit 3"]))
        assert row.state == "running" and row.spec.argv == ["sh", "-c", "exit 3"]
        row = await manager.wait(row.sandbox_id, timeout=20)
        assert (row.state, row.returncode, row.exit_reason) == ("exited", 3, "exited")
        assert row.sandbox_id not in manager.live
        assert manager.runtime.deleted == [row.sandbox_id]  # type: ignore[attr-defined]

    _run(test, tmp_path)


def test_terminate_kills_and_says_137(tmp_path: Path) -> None:
    async def test(manager: SandboxManager) -> None:
        row = await manager.create(CreateSandboxRequest())  # the idle entrypoint
        pid = manager.live[row.sandbox_id].pid
        row = await manager.terminate(row.sandbox_id, grace=5)
        assert (row.returncode, row.exit_reason) == (exitcodes.KILLED, "terminated")
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # (reaped by the recording thread)

    _run(test, tmp_path)


def test_a_sandbox_past_its_timeout_says_124(tmp_path: Path) -> None:
    async def test(manager: SandboxManager) -> None:
        row = await manager.create(CreateSandboxRequest(timeout=1))
        row = await manager.wait(row.sandbox_id, timeout=20)
        assert (row.returncode, row.exit_reason) == (exitcodes.TIMED_OUT, "timeout")

    _run(test, tmp_path)


def test_names_are_unique_among_running_sandboxes(tmp_path: Path) -> None:
    async def test(manager: SandboxManager) -> None:
        first = await manager.create(CreateSandboxRequest(name="one"))
        with pytest.raises(AlreadyExists):
            await manager.create(CreateSandboxRequest(name="one"))
        await manager.terminate(first.sandbox_id, grace=0)
        again = await manager.create(CreateSandboxRequest(name="one"))  # free again
        await manager.terminate(again.sandbox_id, grace=0)

    _run(test, tmp_path)


def test_a_launch_that_fails_leaves_a_failed_row_and_nothing_live(tmp_path: Path) -> None:
    async def test(manager: SandboxManager) -> None:
        with pytest.raises(OSError, match="could not start"):
            await manager.create(CreateSandboxRequest(name="broken"))
        rows = manager.store.list_sandboxes(pooled=True)
        assert rows == [] and manager.live == {}
        (row,) = [r for r in manager.store.db.execute("SELECT state, exit_reason FROM "
                                                       "sandboxes")]
        assert tuple(row) == ("exited", "failed")

    _run(test, tmp_path, fail=True)


def test_an_exec_runs_reports_and_ends_with_its_sandbox(tmp_path: Path) -> None:
    async def test(manager: SandboxManager) -> None:
        row = await manager.create(CreateSandboxRequest())
        session = await manager.exec(row.sandbox_id, ExecRequest(
            argv=["sh", "-c", "echo out; echo err >&2; exit 5"]))
        chunks = [chunk async for chunk in session.follow()]
        assert b"".join(d for fd, d in chunks if fd == 1) == b"out\n"
        assert b"".join(d for fd, d in chunks if fd == 2) == b"err\n"
        assert session.returncode == 5 and manager.exec_session(session.exec_id) is session
        await manager.terminate(row.sandbox_id, grace=0)
        with pytest.raises(Conflict, match="already finished"):
            await manager.exec(row.sandbox_id, ExecRequest(argv=["true"]))

    _run(test, tmp_path)
