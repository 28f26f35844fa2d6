"""``hutch.Network``: a private network between sandboxes, hutch's own (Modal has none).

Sandboxes created with ``network=net`` share a subnet of their own and find each other by
name, as the services of a compose file do on theirs::

    net = hutch.Network.from_name("shop", create_if_missing=True)
    db = hutch.Sandbox.create("redis-server", image=redis, network=net,
                              network_aliases=["db"])
    web = hutch.Sandbox.create(image=app_image, network=net)   # reaches redis at db:6379

A network is named like a volume and lives until deleted (refused while a running sandbox
is on it); ``Network.ephemeral()`` gives one for a block.  Each member gets ``eth0`` with
an address of the network's /24 and the names of the others in its ``/etc/hosts``.  It
works with ``block_network=True`` too: then the network is all the sandbox reaches.
"""

from __future__ import annotations

import builtins
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hutch.api import urls
from hutch.api.models import MAX_NETWORK_ALIASES
from hutch.exception import InvalidError, NotFoundError
from hutch.sdk.localobject import LocalObject
from hutch.sdk.options import check_object_name, check_str_dict, check_text, shown
from hutch.sdk.syncbridge import synchronize, synchronize_static
from hutch.sdk.transport import client


@dataclass(frozen=True)
class NetworkMember:
    """A sandbox on a network: its address there and the names it is found by."""

    sandbox_id: str
    address: str
    names: tuple[str, ...]


class Network(LocalObject):
    """A named private network; join it with ``Sandbox.create(network=net)``."""

    def __init__(self, name: str, *, create_if_missing: bool = False,
                 info: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self._create_if_missing = create_if_missing
        self._info: dict[str, Any] | None = dict(info) if info is not None else None

    def __repr__(self) -> str:
        return f"Network({self.name!r})"

    @property
    def object_id(self) -> str | None:
        """The engine's id (``net-...``), once the network was looked up."""
        return None if self._info is None else str(self._info["network_id"])

    @property
    def labels(self) -> dict[str, str]:
        """Its labels (given at :meth:`create`), once the network was looked up."""
        return {} if self._info is None else dict(self._info.get("labels", {}))

    @property
    def subnet(self) -> str | None:
        """Its IPv4 subnet (a /24 of 10.89.0.0/16), once the network was looked up."""
        return None if self._info is None else str(self._info["subnet"])

    async def _resolve(self) -> dict[str, Any]:
        if self._info is None:
            if self._create_if_missing:
                self._info = await client().request("POST", urls.NETWORKS,
                                                    json_body={"name": self.name})
            else:
                self._info = await client().request("GET",
                                                    urls.NETWORK.format(name=self.name))
        return self._info

    @synchronize_static
    async def from_name(name: str, *, create_if_missing: bool = False) -> Network:
        """The network called ``name``, looked up at its first use (a missing one is
        :class:`NotFoundError` there, unless ``create_if_missing``); ``hydrate()`` looks
        it up now."""
        check_object_name(name, "Network")
        return Network(name, create_if_missing=bool(create_if_missing))

    @synchronize_static
    async def create(name: str, *, labels: Mapping[str, str] | None = None) -> Network:
        """Make a network called ``name`` (:class:`AlreadyExistsError` if there is one)."""
        check_object_name(name, "Network")
        info = await client().request("POST", urls.NETWORKS, json_body={
            "name": name, "must_create": True,
            "labels": check_str_dict(labels, "labels")})
        return Network(name, info=info)

    @synchronize_static
    async def list() -> list[Network]:
        """Every network, oldest first."""
        doc = await client().request("GET", urls.NETWORKS)
        return [Network(info["name"], info=info) for info in doc["networks"]]

    @synchronize_static
    async def delete(name: str, *, allow_missing: bool = False) -> None:
        """Delete the network (:class:`ConflictError` while a running sandbox is on it)."""
        check_object_name(name, "Network")
        try:
            await client().request("DELETE", urls.NETWORK.format(name=name))
        except NotFoundError:
            if not allow_missing:
                raise

    @staticmethod
    @contextlib.contextmanager
    def ephemeral() -> Iterator[Network]:
        """A new network, deleted when the block exits (its sandboxes must have ended)."""
        network = Network.create(f"ephemeral-{uuid.uuid4().hex[:16]}")
        try:
            yield network
        finally:
            Network.delete(network.name, allow_missing=True)

    @staticmethod
    @contextlib.asynccontextmanager
    async def ephemeral_aio() -> AsyncIterator[Network]:
        """:meth:`ephemeral` for async code."""
        network = await Network.create.aio(f"ephemeral-{uuid.uuid4().hex[:16]}")
        try:
            yield network
        finally:
            await Network.delete.aio(network.name, allow_missing=True)

    @synchronize
    async def hydrate(self) -> Network:
        """Look the network up now (made, if named with ``create_if_missing``)."""
        await self._resolve()
        return self

    @synchronize
    async def members(self) -> builtins.list[NetworkMember]:
        """The sandboxes on the network now, with their addresses and names."""
        self._info = await client().request("GET", urls.NETWORK.format(name=self.name))
        return [NetworkMember(m["sandbox_id"], m["address"], tuple(m["names"]))
                for m in self._info["members"]]


async def attachment(network: object, aliases: object) -> dict[str, Any] | None:
    """The ``network_attachment`` of a create request for ``Sandbox.create``'s ``network``
    and ``network_aliases`` (the network looked up, or made, now)."""
    if network is None:
        if aliases:
            raise InvalidError("`network_aliases` need a `network`")
        return None
    if isinstance(network, str):
        network = Network(check_object_name(network, "Network"))
    if not isinstance(network, Network):
        raise InvalidError(f"`network` must be a hutch.Network or its name, not "
                           f"{type(network).__name__}")
    if isinstance(aliases, str) or not isinstance(aliases, Sequence) \
            or not all(isinstance(a, str) for a in aliases):
        raise InvalidError("`network_aliases` must be a list of names")
    if len(aliases) > MAX_NETWORK_ALIASES:
        raise InvalidError(f"a sandbox takes at most {MAX_NETWORK_ALIASES} network aliases")
    for alias in aliases:
        check_text(alias, f"network alias {shown(alias)}")
    await network._resolve()
    return {"name": network.name, "aliases": list(aliases)}
