"""The blocking SDK from many threads, beside and inside event loops, and from other
processes that reconnect to this process's sandboxes by id and by name."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import trio

import hutch
from hutch.sdk import syncbridge
from hutch.sdk.transport import request_blocking

TIMEOUT = 120
THREADS = 8
REPO = Path(__file__).resolve().parents[2]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def run_child(code: str, *args: str, timeout: float = 120) -> Any:
    """Run ``code`` in a new Python process with this test's engine environment; the JSON
    it prints last is the result."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                            env=os.environ.copy(), cwd=REPO, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"child failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


# threads -------------------------------------------------------------------------------------

def test_blocking_api_from_many_threads(engine: dict[str, Any]) -> None:
    start = threading.Barrier(THREADS)

    def work(i: int) -> tuple[str, str, int, int | None, str]:
        start.wait(timeout=30)  # all threads call into the SDK at the same moment
        sb = hutch.Sandbox.create(timeout=TIMEOUT, tags={"thread": str(i)})
        try:
            p = sb.exec("sh", "-c", f"echo out-{i}; echo err-{i} >&2; exit {i}")
            out, err, code = p.stdout.read(), p.stderr.read(), p.wait()
            tags = sb.get_tags()["thread"]
        finally:
            final = sb.terminate(wait=True)
        return out, err, code, final, tags

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(work, range(THREADS), timeout=300))
    assert results == [(f"out-{i}\n", f"err-{i}\n", i, 137, str(i)) for i in range(THREADS)]


def test_threads_share_one_sandbox(sandbox: hutch.Sandbox) -> None:
    def work(i: int) -> tuple[str, int]:
        p = sandbox.exec("sh", "-c", f"echo {i}; exit {i}")
        return p.stdout.read(), p.wait()

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(work, range(THREADS * 2), timeout=300))
    assert results == [(f"{i}\n", i) for i in range(THREADS * 2)]


def test_blocking_api_beside_an_asyncio_loop_in_another_thread(sandbox: hutch.Sandbox) -> None:
    """A loop runs (and later uses ``.aio``) in one thread; the main thread blocks."""
    ready = threading.Event()
    handles: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
    outcome: list[object] = []

    async def loop_side() -> str:
        stop = asyncio.Event()
        handles.append((asyncio.get_running_loop(), stop))
        ready.set()
        await stop.wait()
        p = await sandbox.exec.aio("echo", "from the loop thread")
        out: str = await p.stdout.read.aio()
        assert await p.wait.aio() == 0
        return out

    def thread_main() -> None:
        try:
            outcome.append(asyncio.run(loop_side()))
        except BaseException as exc:  # reported to the test below
            outcome.append(exc)

    thread = threading.Thread(target=thread_main, daemon=True)
    thread.start()
    try:
        assert ready.wait(10), "the asyncio loop thread did not start"
        p = sandbox.exec("sh", "-c", "echo from main; exit 2")
        assert p.stdout.read() == "from main\n"
        assert p.wait() == 2
        assert sandbox.poll() is None
        assert thread.is_alive()  # the loop was running all along
    finally:
        if handles:
            loop, stop = handles[0]
            loop.call_soon_threadsafe(stop.set)
        thread.join(60)
    assert not thread.is_alive()
    assert outcome == ["from the loop thread\n"]


def test_blocking_api_inside_a_running_asyncio_loop(sandbox: hutch.Sandbox) -> None:
    """hutch runs blocking calls on its own loop thread, so one made *inside* a running
    asyncio loop blocks that loop but still returns the right answer."""

    async def main() -> tuple[str, int, str]:
        p = sandbox.exec("sh", "-c", "echo blocking; exit 4")
        out, code = p.stdout.read(), p.wait()
        q = await sandbox.exec.aio("echo", "aio")  # the same loop still works afterwards
        return out, code, await q.stdout.read.aio()

    assert asyncio.run(main()) == ("blocking\n", 4, "aio\n")


def test_blocking_api_inside_a_running_trio_loop(sandbox: hutch.Sandbox) -> None:
    async def main() -> tuple[str, list[str]]:
        out = sandbox.exec("echo", "blocking").stdout.read()
        q = await sandbox.exec.aio("sh", "-c", "echo a; echo b", bufsize=1)
        return out, [line async for line in q.stdout]

    assert trio.run(main) == ("blocking\n", ["a\n", "b\n"])


def test_blocking_api_on_hutchs_own_loop_thread_is_refused(sandbox: hutch.Sandbox) -> None:
    async def nested() -> None:
        sandbox.poll()  # a blocking call made on the portal thread

    with pytest.raises(RuntimeError, match="event-loop thread"):
        syncbridge.run_sync(nested)
    assert sandbox.poll() is None  # and the portal still serves


def test_calls_that_only_talk_to_the_engine_run_on_the_callers_thread(
        engine: dict[str, Any]) -> None:
    """create, exec, streams, wait, poll, tags, terminate: direct calls, so a process that
    makes only these never starts the portal thread (and each is one socket round trip)."""
    got = run_child("""
        import json, threading, hutch
        from hutch.sdk import syncbridge
        sb = hutch.Sandbox.create("sh", "-c", "echo ready; sleep 60", timeout=120)
        first = next(iter(sb.stdout))
        p = sb.exec("sh", "-c", "read x; echo got-$x; echo err >&2; exit 3")
        p.stdin.write(b"in\\n")
        p.stdin.drain()
        lines = list(p.stdout)
        result = [first, lines, p.stderr.read(), p.wait(), p.poll(), sb.poll()]
        sb.set_tags({"k": "v"})
        result.append(sb.get_tags())
        result.append(sb.terminate(wait=True))
        again = hutch.Sandbox.from_id(sb.object_id)
        result.append(again.poll())
        result.append([syncbridge._loop is None, threading.active_count()])
        print(json.dumps(result))
    """)
    assert got == ["ready\n", ["got-in\n"], "err\n", 3, 3, None, {"k": "v"}, 137, 137,
                   [True, 1]]


# other processes -----------------------------------------------------------------------------

RECONNECT = """
    import json, sys
    import hutch
    from hutch.sdk.transport import request_blocking
    sandbox_id, app_name, name = sys.argv[1:4]
    by_id = hutch.Sandbox.from_id(sandbox_id)
    by_name = hutch.Sandbox.from_name(app_name, name)
    p = by_id.exec("cat", "/tmp/from-parent")
    q = by_name.exec("sh", "-c", "echo child > /tmp/from-child")
    print(json.dumps({
        "by_id": by_id.object_id, "by_name": by_name.object_id, "name": by_name.name,
        "read": p.stdout.read(), "code": p.wait(), "q_code": q.wait(),
        "poll": by_name.poll(), "engine_pid": request_blocking("GET", "/v1/engine")["pid"],
    }))
"""


def test_another_process_reconnects_by_id_and_by_name(engine: dict[str, Any]) -> None:
    app = hutch.App.lookup(unique("procs"), create_if_missing=True)
    assert app.name is not None
    sb = hutch.Sandbox.create(app=app, name="shared", timeout=TIMEOUT)
    try:
        assert sb.exec("sh", "-c", "echo parent > /tmp/from-parent").wait() == 0
        engine_pid = request_blocking("GET", "/v1/engine")["pid"]  # other tests restart it
        got = run_child(RECONNECT, sb.object_id, app.name, "shared")
        assert got == {"by_id": sb.object_id, "by_name": sb.object_id, "name": "shared",
                       "read": "parent\n", "code": 0, "q_code": 0, "poll": None,
                       "engine_pid": engine_pid}  # the child did not start an engine
        # what the child did inside the sandbox is seen here
        assert sb.exec("cat", "/tmp/from-child").stdout.read() == "child\n"
    finally:
        sb.terminate()


def test_another_process_gets_not_found_for_a_terminated_name(engine: dict[str, Any]) -> None:
    app = hutch.App.lookup(unique("procs-gone"), create_if_missing=True)
    assert app.name is not None
    sb = hutch.Sandbox.create(app=app, name="gone", timeout=TIMEOUT)
    assert sb.terminate(wait=True) == 137
    code = """
        import json, sys
        import hutch
        from hutch.exception import NotFoundError
        try:
            hutch.Sandbox.from_name(sys.argv[1], "gone")
            print(json.dumps("found"))
        except NotFoundError:
            print(json.dumps({"by_id": hutch.Sandbox.from_id(sys.argv[2]).poll()}))
    """
    assert run_child(code, app.name, sb.object_id) == {"by_id": 137}


TAGS = """
    import json, sys
    import hutch
    sandbox_id, token, mode = sys.argv[1:4]
    sb = hutch.Sandbox.from_id(sandbox_id)
    if mode == "set":
        sb.set_tags({"run": token, "by": "child"})
    print(json.dumps({
        "tags": sb.get_tags(),
        "listed": [s.object_id for s in hutch.Sandbox.list(tags={"run": token})],
    }))
"""


def test_tags_set_in_a_child_are_seen_by_the_parent(sandbox: hutch.Sandbox) -> None:
    token = unique("child-tags")
    assert [s.object_id for s in hutch.Sandbox.list(tags={"run": token})] == []
    got = run_child(TAGS, sandbox.object_id, token, "set")
    assert got == {"tags": {"run": token, "by": "child"}, "listed": [sandbox.object_id]}
    assert sandbox.get_tags() == {"run": token, "by": "child"}
    assert [s.object_id for s in hutch.Sandbox.list(tags={"run": token})] \
        == [sandbox.object_id]


def test_tags_set_in_the_parent_are_seen_by_a_child(sandbox: hutch.Sandbox) -> None:
    token = unique("parent-tags")
    assert run_child(TAGS, sandbox.object_id, token, "get") == {"tags": {}, "listed": []}
    sandbox.set_tags({"run": token, "by": "parent"})
    got = run_child(TAGS, sandbox.object_id, token, "get")
    assert got == {"tags": {"run": token, "by": "parent"}, "listed": [sandbox.object_id]}


LOGS = """
    import json, sys
    import hutch
    sb = hutch.Sandbox.from_id(sys.argv[1])
    if sys.argv[2] == "first-line":
        lines = iter(sb.stdout)
        first = next(lines)
        lines.close()
        print(json.dumps({"first": first, "poll": sb.poll()}))
    else:
        print(json.dumps({"out": sb.stdout.read(), "err": sb.stderr.read(),
                          "poll": sb.poll()}))
"""


def test_a_child_reads_the_output_of_a_finished_entrypoint(engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create("sh", "-c", "echo one; echo two; echo oops >&2; exit 4",
                              timeout=TIMEOUT)
    try:
        sb.wait()
        assert sb.returncode == 4
        got = run_child(LOGS, sb.object_id, "all")
        assert got == {"out": "one\ntwo\n", "err": "oops\n", "poll": 4}
        assert sb.stdout.read() == "one\ntwo\n"  # the child's reading consumed nothing here
    finally:
        sb.terminate()


def test_a_child_streams_the_output_of_a_running_entrypoint(engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create("sh", "-c", "echo started; read line; echo \"got $line\"",
                              timeout=TIMEOUT)
    try:
        got = run_child(LOGS, sb.object_id, "first-line")
        assert got == {"first": "started\n", "poll": None}
        sb.stdin.write("from parent\n")
        sb.stdin.drain()
        sb.wait()
        assert sb.returncode == 0
        got = run_child(LOGS, sb.object_id, "all")
        assert got == {"out": "started\ngot from parent\n", "err": "", "poll": 0}
    finally:
        sb.terminate()
