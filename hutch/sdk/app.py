"""``hutch.App``: a named namespace of sandboxes, as Modal's ``App.lookup`` returns it.

``App.lookup(name, create_if_missing=True)`` is how Modal code gets an app for sandboxes;
``App(name)`` also works here and is created in the engine on first use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from hutch.api import urls
from hutch.exception import InvalidError
from hutch.sdk.createrequest import create_request
from hutch.sdk.options import check_object_name
from hutch.sdk.pool import WarmPool
from hutch.sdk.syncbridge import synchronize, synchronize_static
from hutch.sdk.transport import client

if TYPE_CHECKING:
    from hutch.sdk.image import Image
    from hutch.sdk.volume import Volume


class App:
    """An app: sandboxes are created in one and looked up by name within it."""

    def __init__(self, name: str | None = None, *, app_id: str | None = None) -> None:
        if name is not None:
            check_object_name(name, "App")
        self.name = name
        self._app_id = app_id

    @property
    def app_id(self) -> str | None:
        """The engine's id of the app; None for an ``App(name)`` not used yet."""
        return self._app_id

    async def resolve_id(self) -> str:
        """The app's id, creating the app in the engine on first use of ``App(name)``."""
        if self._app_id is None:
            if self.name is None:
                raise InvalidError("an App needs a name; use App.lookup(name, "
                                   "create_if_missing=True)")
            found = await App.lookup.aio(self.name, create_if_missing=True)
            self._app_id = found.app_id
        assert self._app_id is not None
        return self._app_id

    @synchronize_static
    async def lookup(name: str, *, create_if_missing: bool = False,
                     environment_name: str | None = None, client: object = None) -> App:
        """The app called ``name``; :class:`NotFoundError` unless it exists or
        ``create_if_missing`` is set."""
        if environment_name is not None or client is not None:
            raise InvalidError("App.lookup: `environment_name` and `client` are not supported:"
                               " hutch has one local engine and no Modal environments")
        check_object_name(name, "App")
        body = await _engine().request(
            "POST", urls.APPS_LOOKUP,
            json_body={"name": name, "create_if_missing": bool(create_if_missing)},
        )
        return App(body["name"], app_id=body["app_id"])

    @synchronize
    async def warm_pool(
        self, image: Image | None = None, *, size: int = 4, block_network: bool = False,
        outbound_cidr_allowlist: Sequence[str] | None = None,
        encrypted_ports: Sequence[int] = (), unencrypted_ports: Sequence[int] = (),
        volumes: Mapping[str | os.PathLike[str], Volume] | None = None,
        cpu: float | tuple[float, float] | None = None,
        memory: int | tuple[int, int] | None = None, ephemeral_disk: int | None = None,
        pids_limit: int | None = None,
    ) -> WarmPool:
        """Keep ``size`` sandboxes of ``image`` started for this app (hutch only).

        The other arguments are the container-shaping ones of :meth:`Sandbox.create`; a
        create in this app with the same image and the same values of these, and no
        entrypoint or readiness probe, takes a pooled sandbox.  Declaring the same pool
        again changes its size.
        """
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 64:
            raise InvalidError(f"size must be an int from 1 to 64, got: {size!r}")
        body = await create_request(
            (), app=self, name=None, tags=None, image=image, env=None, secrets=None,
            timeout=300, workdir=None, block_network=block_network, verbose=False,
            idle_timeout=None, cpu=cpu, memory=memory, ephemeral_disk=ephemeral_disk,
            pids_limit=pids_limit, volumes=volumes,
            outbound_cidr_allowlist=outbound_cidr_allowlist, cidr_allowlist=None,
            encrypted_ports=encrypted_ports, unencrypted_ports=unencrypted_ports,
            readiness_probe=None, unsupported={})
        info = await _engine().request("PUT", urls.POOLS,
                                       json_body={"size": size, "sandbox": body})
        return WarmPool(info)

    def __repr__(self) -> str:
        return f"App({self.name!r}, app_id={self._app_id!r})"


_engine = client
