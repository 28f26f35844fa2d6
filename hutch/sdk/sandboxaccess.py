"""The ways into a sandbox from outside it, a part of :class:`hutch.sdk.sandbox.Sandbox`:
its tunnels (``sb.tunnels()``), connect tokens for HTTP requests to a port
(``sb.create_connect_token()``), the timed log of its entrypoint (``sb.logs``), the size
of its entrypoint's terminal (``pty=True``), and Modal's dashboard link (which hutch has
not).

Kept apart so that the sandbox's module stays readable; what it uses of the sandbox is
its id and ``_attached``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hutch.api import urls
from hutch.exception import ClientClosed, InvalidError
from hutch.sdk import catrust
from hutch.sdk.logs import SandboxLogsManager
from hutch.sdk.syncbridge import synchronize, synchronize_direct
from hutch.sdk.transport import client
from hutch.sdk.tunnel import Tunnel


@dataclass(frozen=True)
class SandboxConnectCredentials:
    """What ``create_connect_token`` gives: where to connect, and the token to send."""

    url: str
    token: str


class SandboxAccess:
    object_id: str
    #: let go of (``detach``): no call may use it any more
    _detached: bool

    def _attached(self) -> None:
        if self._detached:
            raise ClientClosed("Unable to perform operation on a detached sandbox")

    @synchronize_direct
    async def resize_terminal(self, rows: int, cols: int) -> None:
        """Set the size of the entrypoint's terminal (``Sandbox.create(pty=True)``); what
        runs on it gets SIGWINCH (a hutch extension)."""
        self._attached()
        await client().request("PUT", urls.SANDBOX_TERMINAL.format(sandbox_id=self.object_id),
                               json_body={"rows": rows, "cols": cols})

    @synchronize
    async def tunnels(self, timeout: int = 50) -> dict[int, Tunnel]:
        """Sandbox port -> :class:`Tunnel` for each of its ``unencrypted_ports`` and
        ``encrypted_ports``; this process trusts the engine's CA from then on."""
        self._attached()
        doc = await client().request(
            "GET", urls.SANDBOX_TUNNELS.format(sandbox_id=self.object_id))
        if any(t.get("tls") for t in doc.values()):  # their https URLs verify from here on
            await trust_engine_ca()
        return {int(port): Tunnel(t["host"], t["port"]) if t.get("tls")
                else Tunnel(t["host"], t["port"], t["host"], t["port"])
                for port, t in doc.items()}

    @property
    def logs(self) -> SandboxLogsManager:
        """The entrypoint's output as timed entries, also after it ended (Modal's
        ``sb.logs``): ``fetch(since=...)``, ``tail(n)`` (:mod:`hutch.sdk.logs`)."""
        sandbox_id = self.object_id

        async def scope() -> dict[str, str]:
            return {"sandbox_id": sandbox_id}

        return SandboxLogsManager(scope, lambda: sandbox_id)

    @synchronize
    async def create_connect_token(self, user_metadata: str | dict[str, Any] | None = None,
                                   port: int = 8080) -> SandboxConnectCredentials:
        """A token for HTTP (and WebSocket) requests to ``port`` of the sandbox: send it as
        ``Authorization: Bearer TOKEN`` (or ``?_modal_connect_token=TOKEN``) to ``url``;
        the sandbox's server gets ``user_metadata`` (a dict as JSON) in the
        ``X-Verified-User-Data`` header.  This process trusts the engine's CA from then on."""
        self._attached()
        if isinstance(user_metadata, dict):
            try:
                user_metadata = json.dumps(user_metadata)
            except (TypeError, ValueError) as exc:
                raise InvalidError(f"Failed to serialize user_metadata: {exc}") from exc
        elif user_metadata is not None and not isinstance(user_metadata, str):
            raise InvalidError("user_metadata must be a str, a dict or None")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise InvalidError("port must be between 1 and 65535")
        found = await client().request(
            "POST", urls.SANDBOX_CONNECT_TOKENS.format(sandbox_id=self.object_id),
            json_body={"user_metadata": user_metadata, "port": port})
        await trust_engine_ca()
        return SandboxConnectCredentials(found["url"], found["token"])

async def trust_engine_ca() -> None:
    """Make this process trust the engine's CA (:mod:`hutch.sdk.catrust`)."""
    ca = await client().request("GET", urls.ENGINE_CA)
    catrust.trust(ca["pem"])
