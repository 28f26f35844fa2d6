"""The SDK's async face against the real engine, under asyncio and under trio.

``.aio`` calls, ``async for`` over output, and the structured-concurrency forms
(``open_sandbox``, ``open_process``) that must clean up on normal exit, on error and on
cancellation.  Every test runs under both backends through anyio's pytest plugin.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

import anyio
import pytest

import hutch
from hutch.exception import (
    AlreadyExistsError,
    ConflictError,
    InvalidError,
    NotFoundError,
    SandboxTerminatedError,
)

TIMEOUT = 120  # every sandbox here is also stopped by its own timeout if cleanup fails
DEADLINE = 60  # seconds any one await here may take before the test fails
CONCURRENT = 20


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def sandbox(*args: str, **kwargs: Any) -> AsyncIterator[hutch.Sandbox]:
    """A sandbox terminated on the way out (shielded, so also when cancelled)."""
    sb = await hutch.Sandbox.create.aio(*args, timeout=TIMEOUT, **kwargs)
    try:
        yield sb
    finally:
        with anyio.CancelScope(shield=True):
            await sb.terminate.aio()


def lines_of(reader: hutch.StreamReader[Any]) -> contextlib.aclosing[AsyncGenerator[Any, None]]:
    """``async for`` over a reader, closed (its request too) when the block ends."""
    return contextlib.aclosing(cast(AsyncGenerator[Any, None], aiter(reader)))


async def returncode_of(sandbox_id: str) -> int | None:
    """The exit code the engine reports for a sandbox, through a fresh handle."""
    other = await hutch.Sandbox.from_id.aio(sandbox_id)
    return await other.poll.aio()


async def new_app(prefix: str) -> hutch.App:
    app = await hutch.App.lookup.aio(unique(prefix), create_if_missing=True)
    assert app.app_id
    return app


# calls ---------------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_create_exec_read_wait(engine: dict[str, Any]) -> None:
    with anyio.fail_after(DEADLINE):
        sb = await hutch.Sandbox.create.aio(timeout=TIMEOUT)
        try:
            assert isinstance(sb, hutch.Sandbox)
            assert await sb.poll.aio() is None
            p = await sb.exec.aio("sh", "-c", "echo out; echo err >&2; exit 3")
            assert await p.stdout.read.aio() == "out\n"
            assert await p.stderr.read.aio() == "err\n"
            assert await p.stdout.read.aio() == ""  # a second read is empty, as in Modal
            assert await p.wait.aio() == 3
            assert p.returncode == 3
            assert await p.poll.aio() == 3
        finally:
            with anyio.CancelScope(shield=True):
                await sb.terminate.aio()


@pytest.mark.anyio
async def test_terminate_wait_gives_137_and_exec_then_conflicts(engine: dict[str, Any]) -> None:
    with anyio.fail_after(DEADLINE):
        sb = await hutch.Sandbox.create.aio(timeout=TIMEOUT)
        assert await sb.terminate.aio(wait=True) == 137
        assert sb.returncode == 137
        assert await sb.poll.aio() == 137
        with pytest.raises(SandboxTerminatedError):
            await sb.wait.aio()
        await sb.wait.aio(raise_on_termination=False)
        with pytest.raises(ConflictError):
            await sb.exec.aio("true")
        with pytest.raises(ConflictError):  # the blocking face says the same
            await anyio.to_thread.run_sync(sb.exec, "true")
        assert await sb.terminate.aio(wait=True) == 137  # a no-op once finished


@pytest.mark.anyio
async def test_async_for_yields_chunks(engine: dict[str, Any]) -> None:
    with anyio.fail_after(DEADLINE):
        async with sandbox() as sb:
            p = await sb.exec.aio("sh", "-c", "printf 'one\\ntwo'; printf ' three\\n' >&2",
                                  text=False)
            chunks = [chunk async for chunk in p.stdout]
            assert chunks and all(isinstance(c, bytes) and c for c in chunks)
            assert b"".join(chunks) == b"one\ntwo"
            assert [c async for c in p.stderr] == [b" three\n"]
            assert await p.wait.aio() == 0

            p = await sb.exec.aio("printf", "text")
            chunks_text = [chunk async for chunk in p.stdout]
            assert "".join(chunks_text) == "text" and all(isinstance(c, str) for c in chunks_text)


@pytest.mark.anyio
async def test_async_for_with_bufsize_1_yields_lines(engine: dict[str, Any]) -> None:
    with anyio.fail_after(DEADLINE):
        async with sandbox() as sb:
            script = "printf 'a\\nbb\\n'; printf 'cc'; printf 'c\\nd'"
            p = await sb.exec.aio("sh", "-c", script, bufsize=1)
            assert [line async for line in p.stdout] == ["a\n", "bb\n", "ccc\n", "d"]
            assert await p.wait.aio() == 0


@pytest.mark.anyio
async def test_a_line_arrives_while_the_command_runs(engine: dict[str, Any]) -> None:
    with anyio.fail_after(DEADLINE):
        async with sandbox() as sb:
            p = await sb.exec.aio("sh", "-c", "echo first; exec sleep 300", bufsize=1)
            async with lines_of(p.stdout) as lines:
                assert await anext(lines) == "first\n"
            assert await p.poll.aio() is None  # streamed, not buffered until the end
            assert await p.kill.aio() == 137
            assert await p.wait.aio() == 137


@pytest.mark.anyio
async def test_stdin_drain(engine: dict[str, Any]) -> None:
    with anyio.fail_after(DEADLINE):
        async with sandbox() as sb:
            p = await sb.exec.aio("cat", bufsize=1)
            async with lines_of(p.stdout) as lines:
                p.stdin.write("hello\n")
                await p.stdin.drain.aio()
                # cat answered before stdin closed: drain delivered the bytes
                assert await anext(lines) == "hello\n"
                p.stdin.write(b"world\n")
                p.stdin.write_eof()
                await p.stdin.drain.aio()
                assert [line async for line in lines] == ["world\n"]
            assert await p.wait.aio() == 0


@pytest.mark.anyio
async def test_entrypoint_stdin_and_stdout(engine: dict[str, Any]) -> None:
    with anyio.fail_after(DEADLINE):
        async with sandbox("sh", "-c", "echo ready; read x; echo \"got $x\"; exit 4") as sb:
            async with lines_of(sb.stdout) as lines:
                assert await anext(lines) == "ready\n"
                sb.stdin.write("ping\n")
                await sb.stdin.drain.aio()
                assert await anext(lines) == "got ping\n"
            await sb.wait.aio()
            assert sb.returncode == 4


# apps, lists, tags, lookups ------------------------------------------------------------------

@pytest.mark.anyio
async def test_app_lookup_and_list(engine: dict[str, Any]) -> None:
    with anyio.fail_after(DEADLINE):
        name = unique("async-list")
        with pytest.raises(NotFoundError):
            await hutch.App.lookup.aio(name)
        app = await hutch.App.lookup.aio(name, create_if_missing=True)
        assert app.name == name and app.app_id
        assert (await hutch.App.lookup.aio(name)).app_id == app.app_id
        async with sandbox(app=app) as one, sandbox(app=app) as two, sandbox():
            found = [sb.object_id async for sb in hutch.Sandbox.list.aio(app_id=app.app_id)]
            assert sorted(found) == sorted([one.object_id, two.object_id])
            listed = [sb async for sb in hutch.Sandbox.list.aio(app_id=app.app_id)]
            assert all(isinstance(sb, hutch.Sandbox) for sb in listed)
            await one.terminate.aio(wait=True)
            found = [sb.object_id async for sb in hutch.Sandbox.list.aio(app_id=app.app_id)]
            assert found == [two.object_id]  # only running sandboxes are listed


@pytest.mark.anyio
async def test_tags_and_from_id(engine: dict[str, Any]) -> None:
    with anyio.fail_after(DEADLINE):
        token = unique("run")
        async with sandbox(tags={"created": "yes"}) as sb:
            assert await sb.get_tags.aio() == {"created": "yes"}
            await sb.set_tags.aio({"run": token, "side": "async"})
            assert await sb.get_tags.aio() == {"run": token, "side": "async"}
            same = await hutch.Sandbox.from_id.aio(sb.object_id)
            assert same.object_id == sb.object_id
            assert await same.get_tags.aio() == {"run": token, "side": "async"}
            found = [s.object_id async for s in hutch.Sandbox.list.aio(tags={"run": token})]
            assert found == [sb.object_id]
            assert [s async for s in hutch.Sandbox.list.aio(tags={"run": token, "side": "x"})
                    ] == []
            p = await same.exec.aio("echo", "via from_id")
            assert await p.stdout.read.aio() == "via from_id\n"
            await same.set_tags.aio({})
            assert await sb.get_tags.aio() == {}


@pytest.mark.anyio
async def test_errors_keep_their_types(engine: dict[str, Any]) -> None:
    with anyio.fail_after(DEADLINE):
        with pytest.raises(NotFoundError) as info:
            await hutch.Sandbox.from_id.aio("sb-" + "x" * 22)
        assert type(info.value) is NotFoundError
        with pytest.raises(InvalidError):
            await hutch.Sandbox.from_id.aio("not-an-id")
        app = await new_app("async-errors")
        assert app.name is not None
        with pytest.raises(NotFoundError):
            await hutch.Sandbox.from_name.aio(app.name, "nobody")
        async with sandbox(app=app, name="taken") as sb:
            with pytest.raises(AlreadyExistsError):
                await hutch.Sandbox.create.aio(app=app, name="taken", timeout=TIMEOUT)
            assert (await hutch.Sandbox.from_name.aio(app.name, "taken")).object_id \
                == sb.object_id
            with pytest.raises(InvalidError):
                await sb.exec.aio()


# open_sandbox --------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_open_sandbox_terminates_on_normal_exit(engine: dict[str, Any]) -> None:
    app = await new_app("async-open")
    with anyio.fail_after(DEADLINE):
        async with hutch.open_sandbox(app=app, timeout=TIMEOUT) as sb:
            sandbox_id = sb.object_id
            p = await sb.exec.aio("echo", "inside")
            assert await p.stdout.read.aio() == "inside\n"
            assert await sb.poll.aio() is None
        assert await returncode_of(sandbox_id) == 137
        assert [s async for s in hutch.Sandbox.list.aio(app_id=app.app_id)] == []


@pytest.mark.anyio
async def test_open_sandbox_terminates_when_the_block_raises(engine: dict[str, Any]) -> None:
    app = await new_app("async-open-raise")
    ids: list[str] = []
    with anyio.fail_after(DEADLINE):
        with pytest.raises(LookupError, match="from the block") as info:
            async with hutch.open_sandbox(app=app, timeout=TIMEOUT) as sb:
                ids.append(sb.object_id)
                raise LookupError("from the block")
        assert type(info.value) is LookupError  # not wrapped in an exception group
        assert await returncode_of(ids[0]) == 137


@pytest.mark.anyio
async def test_open_sandbox_terminates_when_cancelled(engine: dict[str, Any]) -> None:
    app = await new_app("async-open-cancel")
    ids: list[str] = []
    with anyio.fail_after(DEADLINE):
        with anyio.CancelScope() as scope:
            async with hutch.open_sandbox(app=app, timeout=TIMEOUT) as sb:
                ids.append(sb.object_id)
                p = await sb.exec.aio("sleep", "60")
                # The deadline starts only now, so it cancels the in-flight wait request.
                scope.deadline = anyio.current_time() + 0.5
                await p.wait.aio()
                pytest.fail("wait() for `sleep 60` returned inside a 0.5 s deadline")
        assert scope.cancelled_caught
        assert hutch.Sandbox.from_id(ids[0]).poll() == 137  # the blocking face agrees
        assert await returncode_of(ids[0]) == 137


@pytest.mark.anyio
async def test_open_sandbox_cancelled_while_creating_leaves_nothing_running(
        engine: dict[str, Any]) -> None:
    """Cancelled while ``create`` is in flight (the engine lists the sandbox as it starts
    it): the sandbox must not outlive the block."""
    app = await new_app("async-open-creating")
    seen: list[str] = []

    async def cancel_once_listed(scope: anyio.CancelScope) -> None:
        with anyio.fail_after(DEADLINE):
            while not (found := [s async for s in hutch.Sandbox.list.aio(app_id=app.app_id)]):
                await anyio.sleep(0.005)
        seen.append(found[0].object_id)
        scope.cancel()

    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as scope:
            tg.start_soon(cancel_once_listed, scope)
            async with hutch.open_sandbox(app=app, timeout=TIMEOUT):
                await anyio.sleep_forever()
    assert scope.cancelled_caught
    other = await hutch.Sandbox.from_id.aio(seen[0])
    try:
        with anyio.move_on_after(20) as waiting:
            await other.wait.aio(raise_on_termination=False)
        assert not waiting.cancelled_caught, "the sandbox is still running after the block"
        assert other.returncode == 137
    finally:
        with anyio.CancelScope(shield=True):
            await other.terminate.aio()


@pytest.mark.anyio
async def test_open_sandbox_terminates_when_a_sibling_task_fails(
        engine: dict[str, Any]) -> None:
    ids: list[str] = []
    running = anyio.Event()

    async def holder() -> None:
        async with hutch.open_sandbox(timeout=TIMEOUT) as sb:
            ids.append(sb.object_id)
            p = await sb.exec.aio("sleep", "60")
            running.set()
            await p.wait.aio()

    async def failer() -> None:
        await running.wait()
        raise KeyError("sibling")

    with anyio.fail_after(DEADLINE):
        with pytest.raises(ExceptionGroup) as info:  # anyio task groups always group
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder)
                tg.start_soon(failer)
        assert info.group_contains(KeyError, match="sibling")
        assert await returncode_of(ids[0]) == 137


# open_process --------------------------------------------------------------------------------

async def sleepers(sb: hutch.Sandbox, arg: str) -> str:
    """The `sleep <arg>` processes running in the sandbox, one per line."""
    p = await sb.exec.aio("sh", "-c", f"ps -eo args | grep -x 'sleep {arg}' || true")
    out: str = await p.stdout.read.aio()
    await p.wait.aio()
    return out


@pytest.mark.anyio
async def test_kill_right_after_exec(engine: dict[str, Any]) -> None:
    """What ``open_process`` does when its block exits at once: the kill must not wait
    for the process to end by itself."""
    async with sandbox() as sb:
        for attempt in range(5):  # the window right after exec is short: try it a few times
            p = await sb.exec.aio("sleep", "60")
            with anyio.move_on_after(15) as scope:
                code = await p.kill.aio()
            if scope.cancelled_caught:
                pytest.fail(f"kill() right after exec (attempt {attempt}) was still waiting "
                            "after 15 s: the process was not killed")
            assert code == 137
            assert await sleepers(sb, "60") == ""


@pytest.mark.anyio
async def test_open_process_kills_on_exit(engine: dict[str, Any]) -> None:
    with anyio.fail_after(DEADLINE):
        async with sandbox() as sb:
            async with sb.open_process("sleep", "61") as p:
                assert await p.poll.aio() is None
                assert await sleepers(sb, "61") == "sleep 61\n"
            assert await p.poll.aio() == 137
            assert p.returncode == 137
            assert await sleepers(sb, "61") == ""


@pytest.mark.anyio
async def test_open_process_kills_when_cancelled(engine: dict[str, Any]) -> None:
    with anyio.fail_after(DEADLINE):
        async with sandbox() as sb:
            with anyio.CancelScope() as scope:
                async with sb.open_process("sleep", "62") as p:
                    assert await p.poll.aio() is None
                    scope.deadline = anyio.current_time() + 0.5
                    await p.wait.aio()
                    pytest.fail("wait() for `sleep 62` returned inside a 0.5 s deadline")
            assert scope.cancelled_caught
            assert await p.poll.aio() is not None
            assert p.returncode == 137
            assert await sleepers(sb, "62") == ""
            assert await sb.poll.aio() is None  # only the process was killed


@pytest.mark.anyio
async def test_open_process_kills_when_the_block_raises(engine: dict[str, Any]) -> None:
    with anyio.fail_after(DEADLINE):
        async with sandbox() as sb:
            with pytest.raises(ValueError, match="inside"):
                async with sb.open_process("sleep", "33") as p:
                    raise ValueError("inside")
            assert await p.poll.aio() == 137
            assert await sleepers(sb, "33") == ""


@pytest.mark.anyio
async def test_open_process_leaves_a_finished_process_alone(engine: dict[str, Any]) -> None:
    with anyio.fail_after(DEADLINE):
        async with sandbox() as sb:
            async with sb.open_process("sh", "-c", "echo bye; exit 3") as p:
                # The output ends when the process does; its code is not asked for here.
                assert await p.stdout.read.aio() == "bye\n"
            assert p.returncode == 3  # set on the way out, not replaced by a kill's 137
            async with sb.open_process("sh", "-c", "exit 5") as waited:
                assert await waited.wait.aio() == 5
            assert await waited.poll.aio() == 5


# concurrency ---------------------------------------------------------------------------------

async def create_and_exec(i: int, results: dict[int, tuple[str, int, int | None]]) -> None:
    async with hutch.open_sandbox(timeout=TIMEOUT) as sb:
        p = await sb.exec.aio("sh", "-c", f"echo {i}; exit {i % 7}")
        out = await p.stdout.read.aio()
        code = await p.wait.aio()
    results[i] = (out, code, await returncode_of(sb.object_id))


def expected(n: int) -> dict[int, tuple[str, int, int | None]]:
    return {i: (f"{i}\n", i % 7, 137) for i in range(n)}


@pytest.mark.anyio
async def test_many_sandboxes_from_one_task_group(engine: dict[str, Any]) -> None:
    results: dict[int, tuple[str, int, int | None]] = {}
    with anyio.fail_after(3 * DEADLINE):
        async with anyio.create_task_group() as tg:
            for i in range(CONCURRENT):
                tg.start_soon(create_and_exec, i, results)
    assert results == expected(CONCURRENT)


def test_many_sandboxes_with_asyncio_gather(engine: dict[str, Any]) -> None:
    """Plain asyncio, no anyio task group: ``asyncio.gather`` of ``.aio`` calls."""
    results: dict[int, tuple[str, int, int | None]] = {}

    async def main() -> None:
        jobs = [create_and_exec(i, results) for i in range(CONCURRENT)]
        await asyncio.wait_for(asyncio.gather(*jobs), timeout=3 * DEADLINE)

    asyncio.run(main())
    assert results == expected(CONCURRENT)
