"""Starting commands through zygotes (hutch/engine/commands/starter.py) with a fake fork
server and fake zygotes, around a real process standing in for the sandbox's init (its
pidfd and cgroups are the kernel's): one zygote per sandbox, reused, retired when idle and
kept for a pooled sandbox; a zygote that dies is replaced while the sandbox runs, and a
caller hears Conflict once the sandbox has ended.  trio's MockClock jumps over the idle
time."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from hutch.engine.commands.starter import CommandStarter
from hutch.engine.commands.zygote import ZygoteError
from hutch.engine.errors import Conflict
from hutch.engine.storage import remains
from hutch.engine.storage.rootfs import SandboxDirs


class FakeLink:
    """A zygote: hands out processes until it is made to fail or closed."""

    def __init__(self, number: int, pid: int) -> None:
        self.number, self.pid = number, pid
        self.pidfd = os.pidfd_open(pid)
        self.alive, self.keep = True, False
        self.processes: dict[str, Any] = {}
        self.last_used = trio.current_time()
        self.fail_next = False
        self.spawned: list[list[str]] = []
        self._closed = trio.Event()

    async def spawn(self, exec_id: str, argv: list[str], env: dict[str, str], cwd: str, *,
                    stdin: bool, stdout: bool, stderr: bool, user: str | None = None,
                    pty: tuple[int, int] | None = None) -> Any:
        if self.fail_next or not self.alive:
            self.alive = False
            raise ZygoteError("zygote connection lost")
        self.spawned.append(argv)
        return SimpleNamespace(pid=1000 + len(self.spawned), exec_id=exec_id)

    async def read_frames(self) -> None:
        await self._closed.wait()

    async def close(self) -> None:
        self.alive = False
        self._closed.set()
        os.close(self.pidfd)


class FakeForkServer:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.links: list[FakeLink] = []
        self.userns: list[bool] = []

    async def zygote(self, pidfd: int, procs: list[str], *, userns: bool) -> FakeLink:
        self.userns.append(userns)
        self.links.append(FakeLink(len(self.links), self.pid))
        return self.links[-1]

    def gone(self) -> bool:
        return False


@pytest.fixture
def init(tmp_path: Path) -> Iterator[Any]:
    """A running process as the sandbox's init, and the sandbox as the starter sees it."""
    proc = subprocess.Popen(["sleep", "300"])
    dirs = SandboxDirs(tmp_path / "sb-1")
    dirs.root.mkdir()
    live = SimpleNamespace(sandbox_id="sb-1", dirs=dirs, pid=proc.pid,
                           pidfd=os.pidfd_open(proc.pid), ids=None, zygote=None,
                           launcher=lambda: [])
    yield live, proc
    proc.kill()
    proc.wait()
    os.close(live.pidfd)


def _run(test: Any) -> None:
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0))


@contextlib.asynccontextmanager
async def _starter(live: Any, pid: int) -> AsyncIterator[tuple[CommandStarter, FakeForkServer]]:
    """A starter with a fake fork server, its tasks in a nursery ended after the block."""
    live.zygote_lock = trio.Lock()
    server = FakeForkServer(pid)
    async with trio.open_nursery() as nursery:
        yield CommandStarter(None, server, nursery), server  # type: ignore[arg-type]
        nursery.cancel_scope.cancel()


async def _start(starter: CommandStarter, live: Any, exec_id: str) -> None:
    await starter.start(live, exec_id, ["true"], {}, "/", stdin=False, stdout=False,
                        stderr=False)


def test_one_zygote_serves_a_sandbox_and_retires_when_idle(init: Any) -> None:
    live, proc = init

    async def main() -> None:
        async with _starter(live, proc.pid) as (starter, server):
            for n in range(3):
                started = await starter.start(live, f"ex-{n}", ["echo", str(n)], {}, "/",
                                              stdin=False, stdout=True, stderr=True)
                assert started.process.pid == 1001 + n
            assert len(server.links) == 1 and server.links[0].spawned[2] == ["echo", "2"]
            # what a crash leaves behind is found by this record
            assert [(k, pid) for k, pid, _ in remains.recorded(live.dirs.root)] == \
                [("zygote", proc.pid)]
            await trio.sleep(starter.zygote_idle + 5)
            assert live.zygote is None and not server.links[0].alive

    _run(main)


def test_a_pooled_sandboxs_zygote_stays_until_it_is_taken(init: Any) -> None:
    live, proc = init

    async def main() -> None:
        async with _starter(live, proc.pid) as (starter, server):
            await starter.prepare(live)
            await trio.sleep(starter.zygote_idle * 10)
            assert live.zygote is server.links[0] and live.zygote.alive
            starter.taken(live)
            await trio.sleep(starter.zygote_idle + 5)
            assert live.zygote is None

    _run(main)


def test_a_lost_zygote_is_replaced_and_an_ended_sandbox_is_a_conflict(init: Any) -> None:
    live, proc = init

    async def main() -> None:
        async with _starter(live, proc.pid) as (starter, server):
            await _start(starter, live, "ex-0")
            server.links[0].fail_next = True  # it died; the sandbox runs on
            await _start(starter, live, "ex-1")
            assert len(server.links) == 2 and server.links[1].spawned == [["true"]]
            proc.kill()
            proc.wait()
            server.links[1].fail_next = True  # ... and now the sandbox has ended too
            with pytest.raises(Conflict, match="already finished"):
                await _start(starter, live, "ex-2")

    _run(main)
