"""The connect tokens of running sandboxes (Modal's ``sb.create_connect_token``): one
token-checking HTTPS listener per sandbox and port (:mod:`hutch.engine.network.connectproxy`),
made with the first token for it, serving every token made for it since.

The digests of the tokens and their metadata are kept in ``connect.json`` in the sandbox's
directory (0600, like the rest of it), so that a restarted daemon serves them again, on
the same host port where it is free.  They go with the sandbox.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from hutch.engine.errors import Conflict
from hutch.engine.lifecycle.livesandbox import LiveSandbox
from hutch.engine.network import netns, tlsproxy
from hutch.engine.network.connectproxy import ConnectEndpoint, digest
from hutch.engine.network.tunnelmirrors import TunnelMirrors

CONNECT_FILE = "connect.json"

log = logging.getLogger("hutch.tls")


def _load(sandbox_dir: Path) -> dict[int, dict[str, Any]]:
    try:
        found = json.loads((sandbox_dir / CONNECT_FILE).read_text())
        return {int(port): dict(record) for port, record in found.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def _save(sandbox_dir: Path, records: dict[int, dict[str, Any]]) -> None:
    staged = sandbox_dir / f".{CONNECT_FILE}.new"
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(records, out)
    os.replace(staged, sandbox_dir / CONNECT_FILE)


class ConnectTokens:
    def __init__(self, nursery: trio.Nursery, mirrors: TunnelMirrors,
                 tls: Callable[[], Awaitable[ssl.SSLContext]]) -> None:
        self._nursery = nursery
        self._mirrors = mirrors
        self._tls = tls
        #: (sandbox id, port) -> (host port, endpoint)
        self._endpoints: dict[tuple[str, int], tuple[int, ConnectEndpoint]] = {}
        self._lock = trio.Lock()

    async def issue(self, live: LiveSandbox, port: int, metadata: str | None
                    ) -> tuple[str, str]:
        """A new token for ``port`` of the sandbox: (URL, token)."""
        token = secrets.token_urlsafe(32)
        async with self._lock:
            host_port, endpoint = await self._endpoint(live, port)
            endpoint.tokens[digest(token)] = metadata
            self._record(live)
        return f"https://127.0.0.1:{host_port}", token

    async def restore(self, live: LiveSandbox) -> None:
        """Serve the tokens a previous daemon made for the sandbox (what fails is logged:
        a restarted daemon must start whatever one sandbox's records hold)."""
        records = _load(live.dirs.root)
        if not records:
            return
        async with self._lock:
            for port, record in records.items():
                try:
                    host_port = int(record.get("host_port") or 0)
                    tokens = {str(k): None if v is None else str(v)
                              for k, v in dict(record.get("tokens") or {}).items()}
                    await self._endpoint(live, port,
                                         host_port if 0 <= host_port < 65536 else 0, tokens)
                except Exception as exc:
                    log.warning("connect tokens of %s port %s not served again: %s",
                                live.sandbox_id, port, exc)

    def _record(self, live: LiveSandbox) -> None:
        mine = {port: {"host_port": host, "tokens": endpoint.tokens}
                for (sandbox_id, port), (host, endpoint) in self._endpoints.items()
                if sandbox_id == live.sandbox_id}
        if mine:
            _save(live.dirs.root, mine)

    async def _endpoint(self, live: LiveSandbox, port: int, host_port: int = 0,
                        tokens: dict[str, str | None] | None = None
                        ) -> tuple[int, ConnectEndpoint]:
        key = (live.sandbox_id, port)
        if key in self._endpoints:
            return self._endpoints[key]
        if live.done.is_set():
            raise Conflict(f"Sandbox {live.sandbox_id} has already finished")
        endpoint = ConnectEndpoint(
            await self._tls(), functools.partial(netns.connect, live.current_pidfd, port),
            live.done, live.connections, tokens=tokens or {})
        host = await self._nursery.start(tlsproxy.serve_tunnel, endpoint, host_port)
        made = self._endpoints[key] = (host, endpoint)
        self._nursery.start_soon(self._forget, key, live.done)
        await self._mirrors.add_tunnel(host, endpoint)
        return made

    async def _forget(self, key: tuple[str, int], done: trio.Event) -> None:
        await done.wait()
        self._endpoints.pop(key, None)
