"""The ways into a sandbox from outside it, a part of :class:`hutch.sdk.sandbox.Sandbox`:
its tunnels (``sb.tunnels()``), the timed log of its entrypoint (``sb.logs``), and
Modal's dashboard link (which hutch has not).

Kept apart so that the sandbox's module stays readable; what it uses of the sandbox is
its id and ``_attached``.
"""

from __future__ import annotations

from typing import NoReturn

from hutch.api import urls
from hutch.sdk import catrust, options
from hutch.sdk.logs import SandboxLogsManager
from hutch.sdk.syncbridge import synchronize
from hutch.sdk.transport import client
from hutch.sdk.tunnel import Tunnel


class SandboxAccess:
    object_id: str

    def _attached(self) -> None:
        raise NotImplementedError  # the sandbox's

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

    def get_dashboard_url(self) -> NoReturn:
        options.refuse_platform("Sandbox.get_dashboard_url", options.DASHBOARD)


async def trust_engine_ca() -> None:
    """Make this process trust the engine's CA (:mod:`hutch.sdk.catrust`)."""
    ca = await client().request("GET", urls.ENGINE_CA)
    catrust.trust(ca["pem"])
