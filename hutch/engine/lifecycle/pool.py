"""Warm pools: sandboxes started ahead of time, each handed out once.

A pool belongs to an app and is declared with the settings that shape a container (image,
network, allowlist, ports, volumes, limits, disk).  Its keeper task keeps ``size`` pooled
sandboxes running: ordinary sandboxes running the default entrypoint, created through the
same path as any other, but unlisted and without a deadline (``pooled`` in the store).

``Sandbox.create`` with the same app and the same settings, no entrypoint and no readiness
probe takes one instead of starting a container: the engine gives it the request's env,
workdir, name, tags and timeouts (:meth:`SandboxManager.adopt_pooled`) and it is an
ordinary sandbox from then on.  What a pooled sandbox's user could tell apart from a fresh
one is kept the same for both: a default entrypoint always runs with the image's
environment in ``/``, the hostname is the sandbox's id, the clock starts at the take.

Pools live as long as the engine: a restarted engine terminates the pooled sandboxes it
finds, and clients declare their pools again.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import trio

from hutch.api.models import CreateSandboxRequest, PoolInfo
from hutch.engine.commands.starter import CommandStarter
from hutch.engine.errors import AlreadyExists, Invalid, NotFound
from hutch.engine.images.service import ImageService
from hutch.engine.lifecycle.livesandbox import LiveSandbox
from hutch.engine.lifecycle.reserve import DEFAULT_SIZE as DEFAULT_RESERVE
from hutch.engine.lifecycle.reserve import KEY_FIELDS, REFILL_DELAY, Reserve, make_ahead
from hutch.engine.network import hostnet, outbound
from hutch.engine.storage.recordids import new_id
from hutch.engine.storage.store import SandboxRow, Store
from hutch.imagebuild.layout import Image


class PoolHost(Protocol):
    """What a pool needs of the sandbox manager (:mod:`hutch.engine.lifecycle.manager`,
    which holds the pools: it names this, not the other way round)."""

    images: ImageService
    store: Store
    live: dict[str, LiveSandbox]
    commands: CommandStarter

    def app_id(self, req: CreateSandboxRequest) -> str: ...
    async def create(self, req: CreateSandboxRequest, *, pooled: bool = False,
                     waiter: bool = False) -> SandboxRow: ...
    def adopt_pooled(self, sandbox_id: str, req: CreateSandboxRequest, image: Image
                     ) -> SandboxRow: ...
    async def terminate(self, sandbox_id: str, grace: float) -> SandboxRow: ...
    async def write_stdin(self, sandbox_id: str, data: bytes, eof: bool) -> None: ...

log = logging.getLogger("hutch.pool")


def pool_key(req: CreateSandboxRequest, app_id: str, image: Image) -> str | None:
    """What a sandbox for ``req`` must share with a pool's to come from it (None: no pool
    can serve it, because its entrypoint or probe must start with it)."""
    if req.entrypoint or req.readiness_probe is not None or image.runs_cmd or req.pty:
        return None
    settings = req.model_dump(include=set(KEY_FIELDS), mode="json")
    return json.dumps([app_id, [p.name for p in image.layer_dirs], image.env,
                       settings], sort_keys=True)


@dataclass
class WarmPool:
    pool_id: str
    app_id: str
    key: str
    template: CreateSandboxRequest
    image: Image
    size: int
    ready: deque[str] = field(default_factory=deque)
    filling: int = 0
    taken: int = 0
    last_error: str | None = None
    changed: trio.Event = field(default_factory=trio.Event)
    closed: bool = False

    def failed(self, why: str) -> None:
        self.last_error = why

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def info(self) -> PoolInfo:
        return PoolInfo(pool_id=self.pool_id, app_id=self.app_id, image=self.image.ref,
                        size=self.size, ready=len(self.ready), taken=self.taken,
                        last_error=self.last_error)


class PoolService:
    def __init__(self, manager: PoolHost, nursery: trio.Nursery,
                 reserve_size: int = DEFAULT_RESERVE) -> None:
        self.manager = manager
        self.nursery = nursery
        self.pools: dict[str, WarmPool] = {}
        #: the host's networks each pooled sandbox's firewall was made against
        self.views = hostnet.Views(files=(outbound.HOST_CA_BUNDLE,))
        #: the pool the engine keeps by itself, for the configuration used most
        self.reserve = Reserve(manager, nursery, reserve_size)

    async def declare(self, template: CreateSandboxRequest, size: int) -> WarmPool:
        """The app's pool for these settings, made or resized to ``size``."""
        if template.name is not None:
            raise Invalid("a warm pool's sandboxes have no name; name them at create")
        # What differs per user is given at the take; a pooled sandbox waits without them.
        template = template.model_copy(update={
            "idle_timeout": None, "env": {}, "workdir": None, "tags": {}, "verbose": False})
        app_id = self.manager.app_id(template)
        image = await self.manager.images.resolve(template.image)
        key = pool_key(template, app_id, image)
        if key is None:
            raise Invalid("warm pools serve sandboxes with the default entrypoint and no "
                          "readiness probe, from images that run no command of their own")
        for pool in self.pools.values():
            if pool.key == key:
                pool.size = size
                pool.notify()
                return pool
        pool = WarmPool(new_id("wp"), app_id, key, template, image, size)
        self.pools[pool.pool_id] = pool
        self.nursery.start_soon(self._keep, pool)
        return pool

    def get(self, pool_id: str) -> WarmPool:
        pool = self.pools.get(pool_id)
        if pool is None:
            raise NotFound(f"warm pool {pool_id!r} not found")
        return pool

    async def delete(self, pool_id: str) -> None:
        """Stop refilling, and terminate the sandboxes still waiting in the pool."""
        pool = self.get(pool_id)
        del self.pools[pool_id]
        pool.closed = True
        pool.notify()
        while pool.ready:
            await self.manager.terminate(pool.ready.popleft(), 0.0)

    async def stop_app(self, app_id: str) -> None:
        """The app has stopped (Modal's ``App.stop``): its warm pools end with the
        sandboxes waiting in them, and the reserve keeps nothing for it any more."""
        for pool_id in [p.pool_id for p in self.pools.values() if p.app_id == app_id]:
            if pool_id in self.pools:  # (a concurrent delete may have taken it meanwhile)
                await self.delete(pool_id)
        await self.reserve.forget_app(app_id)

    async def wait_full(self, pool_id: str, timeout: float) -> WarmPool:
        pool = self.get(pool_id)
        with trio.move_on_after(timeout):
            while self._live_count(pool) < pool.size and not pool.closed:
                await pool.changed.wait()
        return pool

    def _live_count(self, pool: WarmPool) -> int:
        pool.ready = deque(s for s in pool.ready if s in self.manager.live
                           and not self.manager.live[s].done.is_set())
        return len(pool.ready)

    async def take(self, req: CreateSandboxRequest, app_id: str, image: Image
                   ) -> SandboxRow | None:
        """A pooled sandbox for ``req``, adopted, or None when no pool has one ready (nor
        the reserve)."""
        if not self.pools:  # no pool declared: nothing to compute
            return await self.reserve.take(req, app_id, image)
        key = pool_key(req, app_id, image)
        pool = next((p for p in self.pools.values() if p.key == key), None) \
            if key is not None else None
        if pool is None or not self._live_count(pool):
            return await self.reserve.take(req, app_id, image)
        if req.name is not None:
            try:
                self.manager.store.sandbox_by_name(app_id, req.name)
            except NotFound:
                pass
            else:
                raise AlreadyExists(
                    f"a running sandbox named {req.name!r} already exists in this app")
        if not self.views.current(pool.ready[0]):  # the host's networks changed: all stale
            stale = list(pool.ready)
            pool.ready.clear()
            pool.notify()
            for sandbox_id in stale:
                self.nursery.start_soon(self.manager.terminate, sandbox_id, 0.0)
            return await self.reserve.take(req, app_id, image)
        sandbox_id = pool.ready.popleft()
        pool.taken += 1
        pool.notify()  # the keeper refills
        return self.manager.adopt_pooled(sandbox_id, req, image)

    async def _keep(self, pool: WarmPool) -> None:
        """Keep ``size`` sandboxes ready, one start at a time, until the pool is deleted."""
        while not pool.closed:
            if self._live_count(pool) + pool.filling >= pool.size:
                await pool.changed.wait()
                if pool.taken:
                    await trio.sleep(REFILL_DELAY)
                continue
            pool.filling += 1
            try:
                row = await make_ahead(
                    lambda: self.manager.create(pool.template, pooled=True), self.views,
                    lambda sandbox_id: self.manager.terminate(sandbox_id, 0.0),
                    f"warm pool {pool.pool_id}", pool.failed)
            finally:
                pool.filling -= 1
            if row is None:  # a fill that fails is reported, then retried
                continue
            if pool.closed:
                await self.manager.terminate(row.sandbox_id, 0.0)
                return
            live = self.manager.live.get(row.sandbox_id)
            if live is not None:
                await self.manager.commands.prepare(live)  # its first exec starts at once
            if pool.closed:  # (deleted, or its app stopped, while the zygote was made)
                await self.manager.terminate(row.sandbox_id, 0.0)
                return
            pool.last_error = None
            pool.ready.append(row.sandbox_id)
            pool.notify()

    def ended(self, sandbox_id: str) -> None:
        """A sandbox ended: if it was waiting in a pool, that pool's keeper starts another."""
        for pool in self.pools.values():
            if sandbox_id in pool.ready:
                pool.notify()
        self.reserve.ended(sandbox_id)
        self.views.forget(sandbox_id)

    async def close(self) -> None:
        for pool_id in list(self.pools):
            await self.delete(pool_id)
        await self.reserve.close()
