"""The engine's warm-pool routes: declare, list, wait for, and delete an app's pools
(:mod:`hutch.engine.lifecycle.pool`), and size the engine's own reserve
(:mod:`hutch.engine.lifecycle.reserve`).  Taking from a pool needs no route:
``POST /v1/sandboxes`` takes from a matching pool, or the reserve, by itself."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import FastAPI, Query

from hutch.api import urls
from hutch.api.enginemodels import ReserveInfo, ReserveRequest
from hutch.api.models import PoolInfo, PoolRequest
from hutch.engine.lifecycle.pool import PoolService
from hutch.engine.routes.common import errors_doc


def add_pool_routes(app: FastAPI, pools: PoolService) -> None:
    @app.put(urls.POOLS, response_model=PoolInfo)
    async def declare_pool(req: PoolRequest) -> PoolInfo:
        return (await pools.declare(req.sandbox, req.size)).info()

    @app.get(urls.POOLS, response_model=list[PoolInfo])
    async def list_pools() -> list[PoolInfo]:
        return [pool.info() for pool in pools.pools.values()]

    @app.get(urls.POOL, response_model=PoolInfo)
    async def get_pool(pool_id: str) -> PoolInfo:
        return pools.get(pool_id).info()

    @app.post(urls.POOL_WAIT, response_model=PoolInfo)
    async def wait_pool(pool_id: str,
                        timeout: Annotated[float, Query(gt=0, le=3600)] = 60.0) -> PoolInfo:
        """The pool once all of its sandboxes are ready, or after ``timeout`` seconds."""
        assert math.isfinite(timeout)
        return (await pools.wait_full(pool_id, timeout)).info()

    @app.delete(urls.POOL, response_model=PoolInfo)
    async def delete_pool(pool_id: str) -> PoolInfo:
        """Delete the pool; its last state (``ready``: the sandboxes it terminated)."""
        info = pools.get(pool_id).info()
        await pools.delete(pool_id)
        return info

    @app.put(urls.ENGINE_RESERVE, responses=errors_doc(400, 422))
    async def resize_reserve(req: ReserveRequest) -> ReserveInfo:
        """Keep ``size`` sandboxes in the engine's reserve from now on (0 turns it off;
        sandboxes waiting beyond it end): for a benchmark of creates it does not serve,
        or to give back what it holds."""
        pools.reserve.resize(req.size)
        return ReserveInfo(**pools.reserve.info())
