"""Hostile code against the engine's memory: output that nobody reads.

Each exec's unread output is kept by the engine until a reader comes.  A sandbox that
starts many execs and never reads them must pay for that itself (its writers block), not
grow the engine: the engine's resident memory is measured while the attack runs, and again
in a second round after the first sandbox ended (what it held must have been released, so
the second round finds the same memory to reuse).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import hutch
from hutch.sdk.transport import request_blocking
from tests.helpers import wait_for

WRITERS = 40
#: Writes 100 bytes at a time as fast as it can, forever.
WRITER = "import os\nwhile True: os.write(1, b'x' * 100)"
#: Budget for the engine's growth: the sandbox's 64 MiB of unread output, the floors of its
#: execs (256 KiB each) and the engine's own bookkeeping.  Before the limit it grew by
#: 16 MiB per exec (640 MiB for 40), more with small chunks.
GROWTH_LIMIT = 160 << 20


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) << 10
    raise AssertionError(f"no VmRSS for {pid}")


def _plateau(pid: int, timeout: float = 40.0) -> int:
    """The engine's RSS once it stopped growing for 2 s (or at the deadline)."""
    deadline = time.monotonic() + timeout
    best, since = _rss(pid), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < 2.0:
        time.sleep(0.25)
        rss = _rss(pid)
        if rss > best + (1 << 20):
            best, since = rss, time.monotonic()
    return best


def _flood(engine_pid: int) -> int:
    sb = hutch.Sandbox.create(timeout=120)
    try:
        procs = [sb.exec("python3", "-c", WRITER) for _ in range(WRITERS)]
        peak = _plateau(engine_pid)
        # the writers are blocked, not dead: the sandbox pays by waiting
        assert all(p.poll() is None for p in procs)
        # and a reader still gets output from its own exec at once
        reader = sb.exec("echo", "still answering")
        assert reader.stdout.read() == "still answering\n"
    finally:
        sb.terminate(wait=True)
    return peak


def _open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_unread_output_is_bounded_per_sandbox_and_released(engine: dict[str, Any]) -> None:
    """Three rounds: an engine that kept a round's buffers (paused pipes of execs that could
    never finish: +80 MiB a round before) runs out of its budget by the third."""
    pid = request_blocking("GET", "/v1/engine")["pid"]
    before, files = _rss(pid), _open_files(pid)
    for round in range(3):
        peak = _flood(pid)
        assert peak - before < GROWTH_LIMIT, f"round {round}: +{(peak - before) >> 20} MiB"
        # the execs ended with their sandbox: their pipes are closed
        wait_for(lambda: _open_files(pid) <= files + 2, timeout=20,
                 what=f"the engine's open files to come back to {files} (round {round})")
