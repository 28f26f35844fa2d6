"""Warm pools (hutch/engine/lifecycle/pool.py) against a fake sandbox manager, through the
seam the pool declares (``PoolHost``): filling to size, a take adopting one and the
refill after it, a failing fill reported and retried, and a deleted pool ending its
sandboxes.  trio's MockClock jumps over the waits: seconds of pool time run in
milliseconds."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from hutch.api.models import CreateSandboxRequest
from hutch.engine.errors import Invalid
from hutch.engine.lifecycle.pool import PoolService
from hutch.engine.lifecycle.reserve import RETRY_AFTER
from hutch.imagebuild.layout import Image

IMAGE = Image(ref="hutch/test", digest="sha256:" + "c" * 64,
              layer_dirs=[Path("/layers/" + "d" * 64)])


class FakeManager:
    """What a pool uses of the manager: sandboxes are names in ``live``, each with an
    event that says it ended."""

    def __init__(self, fail_first: int = 0) -> None:
        self.live: dict[str, Any] = {}
        self.created: list[str] = []
        self.adopted: list[tuple[str, CreateSandboxRequest]] = []
        self.terminated: list[str] = []
        self.prepared: list[str] = []
        self.fail_first = fail_first
        self.ids = (f"sb-{n}" for n in itertools.count())
        self.images = SimpleNamespace(resolve=self._resolve)
        self.commands = SimpleNamespace(prepare=self._prepare)
        self.store = SimpleNamespace(sandbox_by_name=self._by_name)

    async def _resolve(self, ref: str | None) -> Image:
        return IMAGE

    async def _prepare(self, live: Any) -> None:
        self.prepared.append(live.sandbox_id)

    def _by_name(self, app_id: str, name: str) -> None:
        from hutch.engine.errors import NotFound
        raise NotFound(name)

    def app_id(self, req: CreateSandboxRequest) -> str:
        return "ap-test"

    async def create(self, req: CreateSandboxRequest, *, pooled: bool = False) -> Any:
        assert pooled, "a pool's fill is made pooled (unlisted)"
        await trio.sleep(0.5)  # as long as a start takes
        if self.fail_first:
            self.fail_first -= 1
            raise Invalid("the runtime is gone")
        sandbox_id = next(self.ids)
        self.live[sandbox_id] = SimpleNamespace(sandbox_id=sandbox_id, done=trio.Event())
        self.created.append(sandbox_id)
        return SimpleNamespace(sandbox_id=sandbox_id)

    def adopt_pooled(self, sandbox_id: str, req: CreateSandboxRequest, image: Image) -> Any:
        self.adopted.append((sandbox_id, req))
        return SimpleNamespace(sandbox_id=sandbox_id)

    async def terminate(self, sandbox_id: str, grace: float) -> Any:
        self.terminated.append(sandbox_id)
        self.live.pop(sandbox_id).done.set()
        return SimpleNamespace(sandbox_id=sandbox_id)


def _run(test: Any) -> None:
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_pool_fills_a_take_adopts_one_and_the_keeper_refills() -> None:
    async def main() -> None:
        manager = FakeManager()
        async with trio.open_nursery() as nursery:
            pools = PoolService(manager, nursery)  # type: ignore[arg-type]
            pool = await pools.declare(CreateSandboxRequest(image="hutch/test"), 2)
            await pools.wait_full(pool.pool_id, timeout=60)
            assert list(pool.ready) == ["sb-0", "sb-1"] == manager.prepared
            req = CreateSandboxRequest(image="hutch/test", env={"MINE": "1"})
            row = await pools.take(req, "ap-test", IMAGE)
            assert row is not None and row.sandbox_id == "sb-0"
            assert manager.adopted == [("sb-0", req)] and pool.taken == 1
            # a request shaped otherwise (here: a memory limit) is not served by it
            other = CreateSandboxRequest(image="hutch/test", memory=512)
            assert await pools.take(other, "ap-test", IMAGE) is None
            await pools.wait_full(pool.pool_id, timeout=60)
            assert list(pool.ready) == ["sb-1", "sb-2"]
            await pools.close()
            assert sorted(manager.terminated) == ["sb-1", "sb-2"]

    _run(main)


def test_a_failing_fill_is_reported_and_retried() -> None:
    async def main() -> None:
        manager = FakeManager(fail_first=2)
        async with trio.open_nursery() as nursery:
            pools = PoolService(manager, nursery)  # type: ignore[arg-type]
            pool = await pools.declare(CreateSandboxRequest(image="hutch/test"), 1)
            with trio.move_on_after(0.6):
                await pools.wait_full(pool.pool_id, timeout=60)
            assert pool.last_error == "the runtime is gone" and not pool.ready
            started = trio.current_time()
            await pools.wait_full(pool.pool_id, timeout=60)
            assert trio.current_time() - started >= RETRY_AFTER  # it waited before retrying
            assert list(pool.ready) == ["sb-0"] and pool.last_error is None
            await pools.close()

    _run(main)


def test_a_sandbox_that_ends_in_the_pool_is_replaced() -> None:
    async def main() -> None:
        manager = FakeManager()
        async with trio.open_nursery() as nursery:
            pools = PoolService(manager, nursery)  # type: ignore[arg-type]
            pool = await pools.declare(CreateSandboxRequest(image="hutch/test"), 1)
            await pools.wait_full(pool.pool_id, timeout=60)
            manager.live.pop("sb-0").done.set()  # it died (OOM, timeout) while waiting
            pools.ended("sb-0")
            await pools.wait_full(pool.pool_id, timeout=60)
            assert list(pool.ready) == ["sb-1"]
            await pools.close()

    _run(main)


def test_pools_serve_only_sandboxes_that_start_nothing_of_their_own() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            pools = PoolService(FakeManager(), nursery)  # type: ignore[arg-type]
            with pytest.raises(Invalid, match="default entrypoint"):
                await pools.declare(CreateSandboxRequest(image="x", entrypoint=["sh"]), 1)
            with pytest.raises(Invalid, match="no name"):
                await pools.declare(CreateSandboxRequest(image="x", name="n"), 1)

    _run(main)
