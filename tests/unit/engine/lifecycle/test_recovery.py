"""Recovery after a restart of the daemon (hutch/engine/lifecycle/recovery.py): a second
manager on the first one's state adopts what still runs and settles what ended meanwhile.

The first manager "dies" by having its nursery cancelled (nothing of it runs on, and it
records nothing more); the sandboxes are host processes (``fakes.py``) that outlive it, as
containers outlive a killed daemon."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from hutch.api import exitcodes
from hutch.api.models import CreateSandboxRequest, ExecRequest
from hutch.engine.lifecycle import sandboxspec
from hutch.engine.lifecycle.manager import SandboxManager
from hutch.engine.storage.recordids import new_id
from hutch.engine.storage.store import DEFAULT_APP, SandboxRow
from tests.unit.engine.lifecycle.fakes import IMAGE, FakeRuntime, make_manager

Before = Callable[[SandboxManager, FakeRuntime], Awaitable[str]]
After = Callable[[SandboxManager, FakeRuntime, str], Awaitable[None]]


def _restart(tmp_path: Path, before: Before, after: After) -> None:
    """``before`` on a first manager (it returns a sandbox id), which then dies; ``after``
    on a second one, once it has recovered."""
    async def main() -> None:
        runtime = FakeRuntime()
        with trio.fail_after(30):
            async with trio.open_nursery() as first:
                sandbox_id = await before(make_manager(tmp_path, first, runtime), runtime)
                first.cancel_scope.cancel()  # the daemon is killed
            async with trio.open_nursery() as second:
                manager = make_manager(tmp_path, second, runtime)
                await manager.recover()
                await after(manager, runtime, sandbox_id)
                second.cancel_scope.cancel()

    trio.run(main)


async def _ended(manager: SandboxManager, runtime: FakeRuntime, sandbox_id: str,
                 sig: int) -> None:
    """Send ``sig`` to the sandbox's init and wait until its exit is recorded."""
    pid = runtime.pids[sandbox_id]
    os.kill(pid, sig)
    assert await trio.to_thread.run_sync(runtime.recorded[pid].wait, 10)


def _row(manager: SandboxManager, sandbox_id: str) -> SandboxRow:
    return manager.store.sandbox(sandbox_id)


def test_a_running_sandbox_is_adopted_and_serves_as_before(tmp_path: Path) -> None:
    async def before(manager: SandboxManager, runtime: FakeRuntime) -> str:
        row = await manager.create(CreateSandboxRequest(name="kept", tags={"k": "v"}))
        (manager.exits_dir / "999999999").write_text('{"code": 0}')  # nobody's any more
        return row.sandbox_id

    async def after(manager: SandboxManager, runtime: FakeRuntime, sandbox_id: str) -> None:
        row = _row(manager, sandbox_id)
        assert sandbox_id in manager.live and row.state == "running" and row.name == "kept"
        assert not (manager.exits_dir / "999999999").exists()
        session = await manager.exec(sandbox_id, ExecRequest(argv=["sh", "-c", "echo hi"]))
        assert [d async for fd, d in session.follow() if fd == 1] == [b"hi\n"]
        row = await manager.terminate(sandbox_id, grace=5)
        assert (row.returncode, row.exit_reason) == (exitcodes.KILLED, "terminated")
        assert sandbox_id not in runtime.pids and sandbox_id not in manager.live

    _restart(tmp_path, before, after)


def test_a_sandbox_that_ended_meanwhile_gets_its_own_code(tmp_path: Path) -> None:
    async def before(manager: SandboxManager, runtime: FakeRuntime) -> str:
        return (await manager.create(CreateSandboxRequest(entrypoint=["sleep", "60"]))
                ).sandbox_id

    async def after(manager: SandboxManager, runtime: FakeRuntime, sandbox_id: str) -> None:
        row = _row(manager, sandbox_id)
        assert (row.state, row.returncode, row.exit_reason) == ("exited", 143, "exited")
        assert sandbox_id not in manager.live and runtime.deleted == [sandbox_id]

    async def before_then_end(manager: SandboxManager, runtime: FakeRuntime) -> str:
        sandbox_id = await before(manager, runtime)
        manager.nursery.cancel_scope.cancel()  # the daemon dies first: nobody supervises
        with trio.CancelScope(shield=True):
            await _ended(manager, runtime, sandbox_id, signal.SIGTERM)
        return sandbox_id

    _restart(tmp_path, before_then_end, after)


def test_one_past_its_deadline_with_no_exit_record_timed_out(tmp_path: Path) -> None:
    """Its pause process died with it, so nothing recorded its code: past its deadline,
    the engine's timeout is what ended it."""
    async def between(manager: SandboxManager, runtime: FakeRuntime) -> str:
        sandbox_id = (await manager.create(CreateSandboxRequest(timeout=1))).sandbox_id
        pid, deadline = runtime.pids[sandbox_id], _row(manager, sandbox_id).deadline
        manager.nursery.cancel_scope.cancel()  # the daemon dies before the deadline...
        with trio.CancelScope(shield=True):
            os.kill(pid, signal.SIGKILL)  # ... and the pause process, with the code
            assert await trio.to_thread.run_sync(runtime.recorded[pid].wait, 10)
            (manager.exits_dir / str(pid)).unlink()
            await trio.sleep(max(0.0, deadline - time.time()))
        return sandbox_id

    async def after(manager: SandboxManager, runtime: FakeRuntime, sandbox_id: str) -> None:
        row = _row(manager, sandbox_id)
        assert (row.state, row.returncode, row.exit_reason) == (
            "exited", exitcodes.TIMED_OUT, "timeout")

    _restart(tmp_path, between, after)


def test_a_create_cut_short_by_the_crash_failed(tmp_path: Path) -> None:
    async def before(manager: SandboxManager, runtime: FakeRuntime) -> str:
        sandbox_id = new_id("sb")
        _, spec = sandboxspec.spec_of(CreateSandboxRequest(), IMAGE, sandbox_id)
        manager.store.insert_sandbox(
            sandbox_id=sandbox_id, app_id=manager.store.app_by_name(DEFAULT_APP, create=True)[0],
            name="half", image=IMAGE.ref, spec=spec, timeout=60, runtime="fake", tags={})
        return sandbox_id  # (the daemon died between the row and the launch)

    async def after(manager: SandboxManager, runtime: FakeRuntime, sandbox_id: str) -> None:
        row = _row(manager, sandbox_id)
        assert (row.state, row.exit_reason) == ("exited", "failed")
        again = await manager.create(CreateSandboxRequest(name="half"))  # its name is free
        await manager.terminate(again.sandbox_id, grace=0)

    _restart(tmp_path, before, after)


def test_a_pooled_sandbox_goes_with_its_pool(tmp_path: Path) -> None:
    """Its pool died with the old daemon: nobody will take it, so it is ended."""
    async def before(manager: SandboxManager, runtime: FakeRuntime) -> str:
        return (await manager.create(CreateSandboxRequest(), pooled=True)).sandbox_id

    async def after(manager: SandboxManager, runtime: FakeRuntime, sandbox_id: str) -> None:
        row = await manager.wait(sandbox_id, timeout=20)
        assert (row.state, row.exit_reason) == ("exited", "terminated")
        assert sandbox_id not in runtime.pids

    _restart(tmp_path, before, after)


def test_a_cleanup_the_crash_cut_short_is_finished(tmp_path: Path) -> None:
    """The daemon died after marking a terminated sandbox ended and before its cleanup
    (found by the chaos test: its mounts stayed until the hour's sweep).  Its process
    records, removed last by the cleanup, say so; the next daemon finishes it."""
    from hutch.engine.storage import remains

    async def before(manager: SandboxManager, runtime: FakeRuntime) -> str:
        row = await manager.create(CreateSandboxRequest())
        live = manager.live[row.sandbox_id]
        await _ended(manager, runtime, row.sandbox_id, signal.SIGKILL)
        await live.done.wait()  # (its cleanup is over)
        # as if the crash came between mark_exited and the end of _cleanup
        (manager.dirs(row.sandbox_id).root / remains.RECORD).write_text("init 999999999 1\n")
        runtime.deleted.clear()
        return row.sandbox_id

    async def after(manager: SandboxManager, runtime: FakeRuntime, sandbox_id: str) -> None:
        assert runtime.deleted == [sandbox_id]
        assert not (manager.dirs(sandbox_id).root / remains.RECORD).exists()
        assert _row(manager, sandbox_id).state == "exited"

    _restart(tmp_path, before, after)


def test_the_pending_mark_outlives_a_cut_short_cleanup_only(tmp_path: Path) -> None:
    """``cleanup.pending`` is there from before the container until the cleanup is over,
    so a sandbox whose init ended too soon to be recorded is found all the same."""
    from hutch.engine.lifecycle.cleanup import PENDING

    async def before(manager: SandboxManager, runtime: FakeRuntime) -> str:
        ended = await manager.create(CreateSandboxRequest())
        live = manager.live[ended.sandbox_id]
        assert (manager.dirs(ended.sandbox_id).root / PENDING).exists()
        await _ended(manager, runtime, ended.sandbox_id, signal.SIGKILL)
        await live.done.wait()
        assert not (manager.dirs(ended.sandbox_id).root / PENDING).exists()
        (manager.dirs(ended.sandbox_id).root / PENDING).touch()  # as if cut short
        runtime.deleted.clear()
        return ended.sandbox_id

    async def after(manager: SandboxManager, runtime: FakeRuntime, sandbox_id: str) -> None:
        assert runtime.deleted == [sandbox_id]
        assert not (manager.dirs(sandbox_id).root / PENDING).exists()

    _restart(tmp_path, before, after)
