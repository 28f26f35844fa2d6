"""The engine's exec sessions: finished ones stay readable for KEEP_SECONDS, the newest
KEEP_MAX at most, and a sandbox finds its own without walking everyone's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio
import trio.testing

from hutch.engine.lifecycle import execregistry
from hutch.engine.lifecycle.execregistry import ExecRegistry


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
