"""The blocking API in a forked child: the portal thread and pools do not survive fork."""

from __future__ import annotations

import multiprocessing
from typing import Any

import hutch


def _child(sandbox_id: str, queue: Any) -> None:
    sb = hutch.Sandbox.from_id(sandbox_id)
    queue.put(sb.exec("echo", "from-child").stdout.read())


def test_a_forked_child_starts_its_own_portal(engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create(timeout=60)
    try:
        assert sb.exec("true").wait() == 0  # the parent's portal and pool are in use
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_child, args=(sb.object_id, queue))
        child.start()
        assert queue.get(timeout=60) == "from-child\n"
        child.join(timeout=30)
        assert child.exitcode == 0
        assert sb.exec("echo", "parent").stdout.read() == "parent\n"
    finally:
        sb.terminate()
