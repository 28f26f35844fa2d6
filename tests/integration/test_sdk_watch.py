"""``sb.watch`` / ``filesystem.watch``: inotify events under a path, recursive or not."""

from __future__ import annotations

import itertools
import threading
from typing import Any

import pytest

import hutch
from hutch.sdk.files import FileWatchEvent, FileWatchEventType
from tests.helpers import wait_for


def _collect(sb: hutch.Sandbox, path: str, **kwargs: Any
             ) -> tuple[list[FileWatchEvent], threading.Thread]:
    events: list[FileWatchEvent] = []

    def run() -> None:
        for event in sb.watch(path, **kwargs):
            events.append(event)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return events, thread


_pings = itertools.count(1)


def _ping(sb: hutch.Sandbox) -> bool:
    """Create a new file in the watched directory: a Create event each time, so that
    pinging until the watch (which starts asynchronously) reports one always ends."""
    return sb.exec("touch", f"/tmp/w/ping-{next(_pings)}").wait() == 0


def _seen(events: list[FileWatchEvent]) -> set[tuple[str, str]]:
    return {(e.type.value, p) for e in events for p in e.paths}


@pytest.fixture
def sandbox_with_dirs(engine: dict[str, Any]) -> Any:
    sb = hutch.Sandbox.create(timeout=120)
    assert sb.exec("mkdir", "-p", "/tmp/w/sub").wait() == 0
    yield sb
    sb.terminate()


def test_recursive_watch_sees_new_files_dirs_and_removals(sandbox_with_dirs: Any) -> None:
    sb = sandbox_with_dirs
    events, thread = _collect(sb, "/tmp/w", recursive=True, timeout=8)
    # Write until the watch has seen a first event (it starts asynchronously).
    wait_for(lambda: _ping(sb) and events, timeout=20,
             what="the watch to start")
    script = ("echo a > /tmp/w/a; mkdir /tmp/w/new; echo b > /tmp/w/new/b; rm /tmp/w/a; "
              "echo c > /tmp/w/sub/c")
    assert sb.exec("sh", "-c", script).wait() == 0
    wanted = {("Create", "/tmp/w/a"), ("Create", "/tmp/w/new"), ("Create", "/tmp/w/new/b"),
              ("Remove", "/tmp/w/a"), ("Create", "/tmp/w/sub/c"), ("Modify", "/tmp/w/sub/c")}
    wait_for(lambda: wanted <= _seen(events), timeout=20, what=f"events {wanted}")
    assert all(p.startswith("/tmp/w") for _, p in _seen(events))  # paths as the sandbox sees
    thread.join(timeout=30)  # the timeout ends the watch
    assert not thread.is_alive()


def test_non_recursive_watch_and_filter(sandbox_with_dirs: Any) -> None:
    sb = sandbox_with_dirs
    events, thread = _collect(sb, "/tmp/w", recursive=False, timeout=30,
                              filter=[FileWatchEventType.Create])
    wait_for(lambda: _ping(sb) and events, timeout=20,
             what="the watch to start")
    assert sb.exec("sh", "-c", "echo x > /tmp/w/sub/deep; echo y > /tmp/w/top").wait() == 0
    wait_for(lambda: ("Create", "/tmp/w/top") in _seen(events), timeout=20, what="top")
    assert ("Create", "/tmp/w/sub/deep") not in _seen(events)
    assert {e.type for e in events} == {FileWatchEventType.Create}
    sb.terminate()  # the watch ends with the sandbox
    thread.join(timeout=20)
    assert not thread.is_alive()


def test_watching_a_missing_path_fails(sandbox_with_dirs: Any) -> None:
    with pytest.raises(FileNotFoundError):
        list(sandbox_with_dirs.watch("/tmp/nope", timeout=5))
