"""``WarmPool``: an app's pre-started sandboxes for one set of create arguments.

``app.warm_pool(image, size=4)`` asks the engine to keep four sandboxes of that image
running; a later ``Sandbox.create(app=app, image=image)`` with the same container-shaping
arguments (network, allowlist, ports, volumes, resources) and no entrypoint takes one of
them, in a few milliseconds, with its own env, secrets, workdir, name, tags and timeouts.
Each pooled sandbox is handed out once; the engine starts another in the background.
"""

from __future__ import annotations

from typing import Any

from hutch.api import urls
from hutch.exception import TimeoutError
from hutch.sdk.syncbridge import synchronize
from hutch.sdk.transport import client


class WarmPool:
    """A warm pool in the engine (``App.warm_pool`` makes or resizes one)."""

    def __init__(self, info: dict[str, Any]) -> None:
        self._info = info

    @property
    def pool_id(self) -> str:
        pool_id: str = self._info["pool_id"]
        return pool_id

    @property
    def size(self) -> int:
        size: int = self._info["size"]
        return size

    @synchronize
    async def stats(self) -> dict[str, Any]:
        """``{"size", "ready", "taken", "last_error"}``, as the engine sees them now."""
        self._info = await client().request("GET", urls.POOL.format(pool_id=self.pool_id))
        return {k: self._info[k] for k in ("size", "ready", "taken", "last_error")}

    @synchronize
    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until every sandbox of the pool is running; :class:`TimeoutError` (with
        the last start failure, if any) when that takes longer than ``timeout`` seconds."""
        self._info = await client().request("POST", urls.POOL_WAIT.format(pool_id=self.pool_id),
                                            params={"timeout": timeout})
        if self._info["ready"] < self._info["size"]:
            why = f": {self._info['last_error']}" if self._info["last_error"] else ""
            raise TimeoutError(f"warm pool {self.pool_id}: {self._info['ready']} of "
                               f"{self._info['size']} sandboxes ready after {timeout} s{why}")

    @synchronize
    async def delete(self) -> None:
        """Stop refilling and terminate the sandboxes still waiting (taken ones live on)."""
        await client().request("DELETE", urls.POOL.format(pool_id=self.pool_id))

    def __repr__(self) -> str:
        return f"WarmPool({self.pool_id!r}, size={self.size})"
