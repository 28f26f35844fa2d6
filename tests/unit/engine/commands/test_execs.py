"""An exec's session (hutch/engine/commands/execs.py) around a real host process standing in
for the command a zygote started (the seam: ``StartedCommand``, held by its pidfd): output
in the order produced and its exit code, a timeout that kills and says 124, and unread
output that pauses the writer at the sandbox's budget until a reader drains it."""

from __future__ import annotations

import os
import sys
from typing import Any

import trio

from hutch.api.exitcodes import TIMED_OUT
from hutch.engine.commands.execs import EXEC_FLOOR, ExecSession, OutputBudget
from hutch.engine.commands.starter import StartedCommand


class HostCommand(StartedCommand):
    """A host process as the command: named by a pidfd held since it started."""

    def pidfd(self) -> int | None:
        return self.process.pidfd  # type: ignore[attr-defined, no-any-return]


async def _session(code: str, *, timeout: float | None = None,
                   budget: OutputBudget | None = None) -> ExecSession:
    process: Any = await trio.lowlevel.open_process(
        [sys.executable, "-c", code], stdout=-1, stderr=-1)
    process.lost = False
    process.pidfd = os.pidfd_open(process.pid)
    return ExecSession("ex-1", "sb-1", ["python3"], HostCommand(process), b"ex-1", None,
                       timeout, budget)


async def _drain(session: ExecSession) -> list[tuple[int, bytes]]:
    return [chunk async for chunk in session.follow()]


def test_output_in_order_and_the_exit_code() -> None:
    async def main() -> None:
        session = await _session(
            "import os; os.write(1, b'one'); os.write(2, b'two'); os.write(1, b'three');"
            " raise SystemExit(3)")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run)
            chunks = await _drain(session)
        assert b"".join(d for fd, d in chunks if fd == 1) == b"onethree"
        assert b"".join(d for fd, d in chunks if fd == 2) == b"two"
        assert session.returncode == 3 and session.unread == 0

    trio.run(main)


def test_a_timeout_kills_the_command_and_reports_124() -> None:
    async def main() -> None:
        session = await _session("import time; print('up', flush=True); time.sleep(300)",
                                 timeout=0.5)
        with trio.fail_after(30):
            code = await session.run()
        assert code == TIMED_OUT and session.timed_out
        assert session.process.returncode is not None  # it was killed, not left running

    trio.run(main)


def test_unread_output_pauses_the_writer_at_the_budget() -> None:
    async def main() -> None:
        budget = OutputBudget(limit=64 << 10)  # the sandbox's budget is spent at once
        session = await _session("import sys\nfor _ in range(160): "
                                 "sys.stdout.buffer.write(b'x' * 65536)\n", budget=budget)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run)
            await trio.sleep(1.0)  # it writes 10 MiB, nobody reads
            assert not session.done.is_set(), "the writer was not paused"
            assert session.unread <= EXEC_FLOOR + (64 << 10) + 1024, session.unread
            total = sum(len(data) for _, data in await _drain(session))
        assert total == 160 * 65536 and session.returncode == 0
        assert budget.spent() is False  # all given back

    trio.run(main)
