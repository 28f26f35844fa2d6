"""The private network routes: create (or look up), list, inspect and delete the named
networks sandboxes join (:mod:`hutch.engine.lifecycle.networks`)."""

from __future__ import annotations

from fastapi import FastAPI

from hutch.api import urls
from hutch.api.networkmodels import CreateNetworkRequest, NetworkInfo, NetworkList
from hutch.engine.errors import NotFound
from hutch.engine.lifecycle.manager import SandboxManager
from hutch.engine.routes.common import errors_doc


def add_network_routes(app: FastAPI, manager: SandboxManager) -> None:
    networks = manager.networks

    def on_network(sandbox_id: str) -> bool:
        """Whether a member's sandbox runs, or is being made (its address is taken)."""
        live = manager.live.get(sandbox_id)
        if live is not None:  # (one that has ended leaves at its cleanup: let go now)
            return not live.done.is_set()
        try:
            return manager.store.sandbox(sandbox_id).state == "creating"
        except NotFound:
            return False

    @app.post(urls.NETWORKS, responses=errors_doc(400, 409, 422, 429))
    async def create_network(req: CreateNetworkRequest) -> NetworkInfo:
        """The network called ``name``, made where there is none; ``409`` when one exists
        and ``must_create`` is set, ``429`` when all 256 subnets are taken."""
        return NetworkInfo(**await networks.create(req.name, must_create=req.must_create,
                                                   labels=req.labels))

    @app.get(urls.NETWORKS)
    async def list_networks() -> NetworkList:
        return NetworkList(networks=[NetworkInfo(**info) for info in networks.infos()])

    @app.get(urls.NETWORK, responses=errors_doc(404, 422))
    async def get_network(name: str) -> NetworkInfo:
        """The network, with its members' addresses and names."""
        return NetworkInfo(**networks.info(name))

    @app.delete(urls.NETWORK, responses=errors_doc(404, 409, 422))
    async def delete_network(name: str) -> dict[str, str]:
        """Delete the network; ``409`` while a running sandbox is on it."""
        await networks.delete(name, on_network)
        return {"deleted": name}
