"""FileOps: each owner's own worker threads, and deadlines that bound every call.

Real worker threads blocked on real ``threading.Event``s stand in for an open that waits on
a sandbox: what is under test is the limiter and the deadline, not the blocking call.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import trio

from hutch.engine.errors import TimedOut
from hutch.engine.files.fileops import FileOps, check_deadline, deadline_after


def test_one_owner_cannot_take_anothers_threads() -> None:
    ops = FileOps(per_owner=2, timeout=5)
    release = threading.Event()
    took: dict[str, float] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(6):  # three times A's share, all blocked
                nursery.start_soon(ops.run, "sandbox A", release.wait)
            await trio.sleep(0.1)
            assert ops.busy("sandbox A") == 2
            start = trio.current_time()
            assert await ops.run("sandbox B", lambda: "b") == "b"
            took["B"] = trio.current_time() - start
            # and trio's own pool, which creating sandboxes uses, is untouched
            assert trio.to_thread.current_default_thread_limiter().borrowed_tokens == 0
            release.set()

    trio.run(main)
    assert took["B"] < 0.5


def test_a_call_past_its_deadline_answers_timeout_and_keeps_only_its_owners_slot() -> None:
    ops = FileOps(per_owner=1, timeout=0.2)
    release = threading.Event()

    async def main() -> None:
        start = trio.current_time()
        with pytest.raises(TimedOut, match="deadline"):
            await ops.run("sandbox A", release.wait, doing="an open")
        assert trio.current_time() - start < 2.5  # the deadline plus its grace
        # the abandoned thread still holds A's only slot: A waits, B does not
        assert ops.busy("sandbox A") == 1
        with pytest.raises(TimedOut):
            await ops.run("sandbox A", lambda: None)
        assert await ops.run("sandbox B", lambda: 1) == 1
        release.set()
        for _ in range(100):
            if ops.busy("sandbox A") == 0:
                break
            await trio.sleep(0.02)
        assert ops.busy("sandbox A") == 0
        assert await ops.run("sandbox A", lambda: 2) == 2

    trio.run(main)


def test_limiters_of_idle_owners_are_dropped() -> None:
    ops = FileOps()

    async def main() -> None:
        for n in range(50):
            await ops.run(f"sandbox {n}", lambda: None)

    trio.run(main)
    assert ops._limiters == {}


def test_check_deadline() -> None:
    check_deadline(deadline_after(10), "listing")
    with pytest.raises(TimedOut, match="listing '/big' did not finish"):
        check_deadline(time.monotonic() - 1, "listing '/big'")


def test_an_abandoned_step_keeps_a_descriptor_of_its_own(tmp_path: Path) -> None:
    """The caller closes its descriptor when the call times out; the step still running
    must not then use that number, which the next open may give to another sandbox's
    file: it reads through a duplicate, closed when the step ends."""
    ops = FileOps(per_owner=1, timeout=0.2)
    (tmp_path / "mine").write_bytes(b"mine")
    (tmp_path / "theirs").write_bytes(b"theirs")
    release = threading.Event()
    read: list[bytes] = []

    def slow_read(fd: int) -> bytes:
        release.wait()
        read.append(os.pread(fd, 100, 0))
        return read[-1]

    async def main() -> None:
        fd = os.open(tmp_path / "mine", os.O_RDONLY)
        with pytest.raises(TimedOut):
            await ops.run_fd("sandbox A", slow_read, fd)
        os.close(fd)
        reused = os.open(tmp_path / "theirs", os.O_RDONLY)  # most likely the same number
        release.set()
        while ops.busy("sandbox A"):
            await trio.sleep(0.01)
        os.close(reused)

    fds_before = len(os.listdir("/proc/self/fd"))
    trio.run(main)
    assert read == [b"mine"]
    assert len(os.listdir("/proc/self/fd")) == fds_before  # the duplicate was closed


def test_a_step_that_never_began_releases_its_duplicate() -> None:
    ops = FileOps(per_owner=1, timeout=0.2)
    release = threading.Event()

    async def hold() -> None:
        with pytest.raises(TimedOut):
            await ops.run("sandbox A", release.wait)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hold)
            await trio.sleep(0.05)
            fd = os.open("/dev/null", os.O_RDONLY)
            with pytest.raises(TimedOut):  # waits for A's only slot, never begins
                await ops.run_fd("sandbox A", os.fstat, fd)
            os.close(fd)
            release.set()

    fds_before = len(os.listdir("/proc/self/fd"))
    trio.run(main)
    assert len(os.listdir("/proc/self/fd")) == fds_before
