"""``sb.logs`` and ``app.logs`` (Modal's timed log entries of entrypoints), an app's tags
and info, and ``ContainerProcess.attach``: against the engine, as a Modal program uses
them.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import hutch
from hutch.exception import InvalidError, NotFoundError

# Three lines a second apart, on stdout and stderr, then an exit code.
SPEAKER = ("import sys, time\n"
           "print('first', flush=True)\n"
           "time.sleep(1)\n"
           "print('second', file=sys.stderr, flush=True)\n"
           "time.sleep(1)\n"
           "print('third', flush=True)\n"
           "sys.exit(3)\n")


def test_sandbox_logs_are_timed_lines_kept_after_the_end(engine: dict[str, Any]) -> None:
    app = hutch.App.lookup(f"logs-{uuid.uuid4().hex[:8]}", create_if_missing=True)
    started = datetime.now(UTC)
    sb = hutch.Sandbox.create("python3", "-c", SPEAKER, app=app, timeout=60)
    sb.wait(raise_on_termination=False)
    assert sb.returncode == 3
    entries = list(sb.logs.fetch(since=started - timedelta(seconds=1)))
    output = [e for e in entries if e.source != "system"]
    assert [(e.message, e.source) for e in output] == [
        ("first\n", "stdout"), ("second\n", "stderr"), ("third\n", "stdout")]
    assert all(e.object_id == sb.object_id and e.context_ids == [sb.object_id]
               for e in entries)
    # each line's time is when it was written: a second apart, within the run
    first, second, third = (e.timestamp for e in output)
    assert timedelta(seconds=0.8) < second - first < timedelta(seconds=1.6)
    assert timedelta(seconds=0.8) < third - second < timedelta(seconds=1.6)
    assert started - timedelta(seconds=1) < first and third < datetime.now(UTC)
    system = [e.message for e in entries if e.source == "system"]
    assert len(system) == 2 and "ended (exited, exit code 3)" in system[1]
    # filters: a source, a text, a time range (until exclusive), the tail
    assert [e.message for e in sb.logs.fetch(since=started, source="stderr")] == ["second\n"]
    assert [e.message for e in sb.logs.fetch(since=started, search_text="thi")] == ["third\n"]
    assert [e.message for e in sb.logs.fetch(since=first, until=third)
            if e.source != "system"] == ["first\n", "second\n"]
    assert [e.message for e in sb.logs.tail(2, source="stdout")] == ["first\n", "third\n"]
    with pytest.raises(hutch.exception.LogsFetchError):
        list(sb.logs.tail(20_001))
    with pytest.raises(TypeError):
        list(sb.logs.fetch(since=None))  # type: ignore[arg-type]
    naive = (started - timedelta(seconds=1)).astimezone().replace(tzinfo=None)  # local time
    assert len(list(sb.logs.fetch(since=naive))) == len(entries)
    # and the app's logs merge its sandboxes' in time
    other = hutch.Sandbox.create("sh", "-c", "echo other", app=app, timeout=60)
    other.wait()
    merged = [e for e in app.logs.fetch(since=started) if e.source != "system"]
    assert [e.message for e in merged] == ["first\n", "second\n", "third\n", "other\n"]
    assert {e.context_ids[0] for e in merged} == {sb.object_id, other.object_id}
    assert all(e.object_id == app.app_id for e in merged)
    with pytest.raises(ValueError, match="source"):
        list(sb.logs.fetch(since=started, source="stdin"))  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_app_logs_stream_follows_new_output(engine: dict[str, Any]) -> None:
    app = hutch.App.lookup(f"stream-{uuid.uuid4().hex[:8]}", create_if_missing=True)
    sb = await hutch.Sandbox.create.aio(
        "sh", "-c", "sleep 1; echo one; sleep 1; echo two", app=app, timeout=60)
    seen = [e.message async for e in app.logs.stream.aio(timeout=3)
            if e.source != "system"]
    assert seen == ["one\n", "two\n"]
    await sb.wait.aio()


def test_a_long_output_is_paged(engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create("python3", "-c", "for i in range(12000): print(i)", timeout=60)
    sb.wait()
    lines = [e.message for e in sb.logs.fetch(since=datetime.now(UTC) - timedelta(minutes=5))
             if e.source == "stdout"]
    assert lines == [f"{i}\n" for i in range(12000)]


def test_app_tags_info_and_stop(engine: dict[str, Any]) -> None:
    name = f"tags-{uuid.uuid4().hex[:8]}"
    app = hutch.App(name, tags={"team": "a"})
    with pytest.raises(InvalidError, match="requires the App to have an ID"):
        app.get_tags()  # as Modal's: not before it runs or is looked up
    with app.run():  # the constructor's tags are the app's
        assert app.get_tags() == {"team": "a"}
        app.set_tags({"owner": "me"})  # replaced, not merged, as Modal's
        looked_up = hutch.App.lookup(name)
        assert looked_up.get_tags() == {"owner": "me"}
        info = app.info()
        assert (info.app_id, info.description) == (app.app_id, name)
        assert info.lifecycle.state == "ephemeral" and info.functions == {}
        assert info.lifecycle.created_at <= datetime.now(UTC)
        assert looked_up.info().lifecycle.state == "deployed"
        sb = hutch.Sandbox.create("sleep", "60", app=app, timeout=60)
    # the end of the run stopped it: its sandbox ended, its state says so, and a stream
    # of its logs ends (as Modal's does once the app is done)
    assert sb.poll() == 137
    stopped = looked_up.info().lifecycle
    assert stopped.state == "stopped" and stopped.stopped_at is not None
    assert [e.message for e in looked_up.logs.stream() if e.source != "system"] == []
    again = hutch.Sandbox.create(app=looked_up, timeout=60)  # in use again
    assert looked_up.info().lifecycle.state == "deployed"
    again.terminate()
    with pytest.raises(InvalidError, match="Invalid tag key"):
        app.set_tags({"a b": "c"})
    with pytest.raises(InvalidError, match="billing"):
        app.stats()
    with pytest.raises(InvalidError, match="billing"):
        list(app.sandboxes.stats(since=datetime.now(UTC)))
    with pytest.raises(InvalidError, match="dashboard"):
        app.get_dashboard_url()
    with pytest.raises(NotFoundError):
        hutch.App(name, app_id="ap-doesnotexist").get_tags()


ATTACH = """
import hutch, sys
sb = hutch.Sandbox.create(timeout=60)
p = sb.exec("sh", "-c", "read line; echo got $line; echo warn >&2; exit 4")
p.attach()
print("returncode", p.returncode)
sb.terminate()
"""


def test_attach_connects_the_process_to_this_terminal(engine: dict[str, Any]) -> None:
    done = subprocess.run([sys.executable, "-c", ATTACH], input=b"hello\n",
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"got hello\nreturncode 4\n"
    assert done.stderr == b"warn\n"
