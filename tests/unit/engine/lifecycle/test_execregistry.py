"""The engine's exec sessions: finished ones stay readable for KEEP_SECONDS, the newest
KEEP_MAX at most, and a sandbox finds its own without walking everyone's."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from hutch.engine.errors import NotFound
from hutch.engine.lifecycle import execregistry
from hutch.engine.lifecycle.execregistry import ExecRegistry
from hutch.engine.storage.store import SandboxSpec, Store


@dataclass
class _Session:
    exec_id: str
    sandbox_id: str


def _run(fn: Any) -> None:
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def test_finished_sessions_are_forgotten_after_their_while() -> None:
    async def main() -> None:
        reg = ExecRegistry()
        first, second = _Session("ex-1", "sb-a"), _Session("ex-2", "sb-a")
        for s in (first, second):
            reg.add(s)  # type: ignore[arg-type]
        reg.finished(first)  # type: ignore[arg-type]
        await trio.sleep(execregistry.KEEP_SECONDS - 1)
        assert reg.get("ex-1") is first  # still readable
        await trio.sleep(2)
        reg.finished(second)  # type: ignore[arg-type]
        assert reg.get("ex-1") is None and reg.get("ex-2") is second
        assert reg.of_sandbox("sb-a") == [second]
        assert len(reg) == 1
        await trio.sleep(execregistry.KEEP_SECONDS + 1)
        assert reg.get("ex-2") is None  # (a look-up forgets too, with no exec ending)

    _run(main)


def test_at_most_keep_max_finished_sessions_are_kept(monkeypatch: Any) -> None:
    monkeypatch.setattr(execregistry, "KEEP_MAX", 3)

    async def main() -> None:
        reg = ExecRegistry()
        running = _Session("ex-run", "sb-b")
        reg.add(running)  # type: ignore[arg-type]
        done = [_Session(f"ex-{i}", "sb-a") for i in range(5)]
        for s in done:
            reg.add(s)  # type: ignore[arg-type]
            reg.finished(s)  # type: ignore[arg-type]
        assert [s.exec_id for s in done if reg.get(s.exec_id)] == ["ex-2", "ex-3", "ex-4"]
        assert reg.get("ex-run") is running  # running ones are never forgotten
        assert {s.exec_id for s in reg.of_sandbox("sb-a")} == {"ex-2", "ex-3", "ex-4"}
        assert reg.of_sandbox("sb-b") == [running] and reg.of_sandbox("sb-c") == []

    _run(main)


@dataclass
class _Process:
    killed: bool = False

    def kill(self) -> None:
        self.killed = True


@dataclass
class _Recorded:
    exec_id: str
    sandbox_id: str
    argv: list[str]
    returncode: int | None = None
    timed_out: bool = False
    recorded: str | None = None
    process: _Process = dataclasses.field(default_factory=_Process)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "state.db")
    app_id, _ = s.app_by_name("main", create=True)
    s.insert_sandbox(sandbox_id="sb-a", app_id=app_id, name=None, image="img:1",
                     spec=SandboxSpec(argv=["sleep", "inf"]), timeout=60.0, runtime="crun",
                     tags={})
    yield s
    s.close()


def _writes(store: Store) -> int:
    return store.db.total_changes


def test_an_exec_that_ended_before_its_answer_is_written_once(store: Store) -> None:
    reg = ExecRegistry(store)
    quick = _Recorded("ex-q", "sb-a", ["true"], returncode=0)
    before = _writes(store)
    reg.record(quick)  # type: ignore[arg-type]
    reg.record(quick)  # type: ignore[arg-type]  (recorded: nothing more)
    reg.record_end(quick, 0, sandbox_live=True)  # type: ignore[arg-type]
    assert _writes(store) - before == 1
    assert store.exec_row("ex-q")["state"] == "exited" and quick.recorded == "exited"


def test_a_running_exec_is_written_running_then_ended(store: Store) -> None:
    reg = ExecRegistry(store)
    slow = _Recorded("ex-s", "sb-a", ["sleep", "1"])
    reg.record(slow)  # type: ignore[arg-type]
    assert store.exec_row("ex-s")["state"] == "running"
    slow.returncode = 3
    reg.record_end(slow, 3, sandbox_live=True)  # type: ignore[arg-type]
    row = store.exec_row("ex-s")
    assert (row["state"], row["returncode"]) == ("exited", 3)


def test_an_exec_whose_answer_never_went_is_written_at_its_end(store: Store) -> None:
    reg = ExecRegistry(store)
    orphan = _Recorded("ex-o", "sb-a", ["true"], returncode=7)
    reg.record_end(orphan, 7, sandbox_live=True)  # type: ignore[arg-type]
    assert store.exec_row("ex-o")["returncode"] == 7
    gone = _Recorded("ex-g", "sb-a", ["true"], returncode=0)
    reg.record_end(gone, 0, sandbox_live=False)  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        store.exec_row("ex-g")


def test_a_failed_write_kills_the_command(store: Store) -> None:
    reg = ExecRegistry(store)
    stray = _Recorded("ex-x", "sb-unknown", ["sleep", "9"])
    with pytest.raises(sqlite3.IntegrityError):
        reg.record(stray)  # type: ignore[arg-type]
    assert stray.process.killed and stray.recorded is None
