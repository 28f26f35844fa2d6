"""The sandbox manager's lifecycle (hutch/engine/lifecycle/manager.py) without a container:
its launch seam starts the entrypoint as a host process, a thread records its exit code
as the pause process would, and the runtime is a fake (``fakes.py``).  What is tested is
the manager's own bookkeeping: the row's states and exit reasons (exited with its code,
terminated 137, timed out 124, failed), names, and that an ended sandbox leaves nothing
live."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from hutch.api import exitcodes
from hutch.api.models import CreateSandboxRequest, ExecRequest
from hutch.engine.errors import AlreadyExists, Conflict
from hutch.engine.lifecycle.manager import SandboxManager
from tests.unit.engine.lifecycle.fakes import IMAGE, make_manager


def _run(test: Callable[[SandboxManager], Awaitable[None]], tmp_path: Path,
         fail: bool = False) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            manager = make_manager(tmp_path, nursery, fail=fail)
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


def test_a_pooled_sandbox_handed_out_becomes_its_users(tmp_path: Path) -> None:
    """A warm sandbox is unlisted until taken; taken, it has its user's name, tags, env and
    clock, and keeps what was set up for it (the same process, its limits)."""
    async def test(manager: SandboxManager) -> None:
        warm = await manager.create(CreateSandboxRequest(), pooled=True)
        assert manager.store.list_sandboxes() == []
        pid = manager.live[warm.sandbox_id].pid
        before = time.time()
        row = manager.adopt_pooled(warm.sandbox_id, CreateSandboxRequest(
            name="mine", tags={"team": "a"}, env={"X": "1"}, timeout=100), IMAGE)
        assert (row.name, row.tags, row.spec.env["X"]) == ("mine", {"team": "a"}, "1")
        assert row.spec.limits == warm.spec.limits
        assert before + 100 <= row.deadline <= time.time() + 100
        assert [r.sandbox_id for r in manager.store.list_sandboxes()] == [warm.sandbox_id]
        live = manager.live[warm.sandbox_id]
        assert live.pid == pid and live.env["X"] == "1" and live.deadline == row.deadline
        session = await manager.exec(row.sandbox_id, ExecRequest(argv=["sh", "-c", "echo $X"]))
        assert [d async for fd, d in session.follow() if fd == 1] == [b"1\n"]
        await manager.terminate(row.sandbox_id, grace=0)

    _run(test, tmp_path)


def test_a_create_whose_ports_cannot_be_served_ends_its_sandbox(tmp_path: Path) -> None:
    """The last step of a create (its ports' listeners) failing after the start: the
    create fails and the sandbox ends, rather than running on with nobody holding it (a
    reserve or pool keeper retrying every 2 s leaked one each time)."""
    async def test(manager: SandboxManager) -> None:
        async def no_ca(live: object) -> None:
            raise OSError("openssl is missing")

        manager._serve_tunnels = no_ca  # type: ignore[method-assign]
        with pytest.raises(OSError, match="openssl"):
            await manager.create(CreateSandboxRequest())
        (row,) = [r for r in manager.store.db.execute("SELECT state, exit_reason FROM "
                                                       "sandboxes")]
        assert tuple(row) == ("exited", "terminated") and manager.live == {}

    _run(test, tmp_path)
