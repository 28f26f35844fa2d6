"""Readiness probes: a check run in a sandbox every ``interval_ms`` until it passes.

A probe is a short exec with no stdin and no output, started by the engine itself (it is
not an exec of the API, so it neither shows in the exec records nor counts as activity for
``idle_timeout``).  A TCP probe is such a check too: it connects from inside the sandbox's
network namespace, where the port lives.  Passing sets ``live.ready`` once and for all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from hutch.api.models import ProbeSpec
from hutch.engine.errors import EngineError
from hutch.engine.runtime.base import RuntimeCommandError
from hutch.engine.storage.recordids import new_id

if TYPE_CHECKING:
    from hutch.engine.commands.starter import CommandStarter
    from hutch.engine.lifecycle.livesandbox import LiveSandbox


async def run_probe(commands: CommandStarter, live: LiveSandbox, probe: ProbeSpec) -> None:
    """Run the probe every ``interval_ms`` until it passes or the sandbox ends."""
    argv = probe.exec_argv or tcp_probe_argv(probe.tcp_port or 0)
    async with trio.open_nursery() as nursery:
        async def stop_when_done() -> None:
            await live.done.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(stop_when_done)
        while not live.ready.is_set():
            if await probe_once(commands, live, argv) == 0:
                live.ready.set()
                break
            await trio.sleep(probe.interval_ms / 1000)
        nursery.cancel_scope.cancel()


async def probe_once(commands: CommandStarter, live: LiveSandbox, argv: list[str]) -> int:
    """Run ``argv`` in the sandbox (no output, no stdin, not an exec of the API)."""
    try:
        command = await commands.start(live, new_id("pr"), argv, live.env, live.workdir,
                                       stdin=False, stdout=False, stderr=False)
    except (OSError, RuntimeCommandError, EngineError):
        return -1
    proc = command.process
    try:
        return await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
        command.remove_leftovers()


def tcp_probe_argv(port: int) -> list[str]:
    """A command that exits 0 once something accepts TCP connections on ``port`` inside the
    sandbox (bash's /dev/tcp, else Python; the image needs one of them)."""
    return ["/bin/sh", "-c",
            f"if command -v bash >/dev/null; then exec bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}'"
            f"; fi; exec python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", "
            f"{port}), 1)'"]

