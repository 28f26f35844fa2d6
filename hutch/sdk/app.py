"""``hutch.App``: a named namespace of sandboxes, as Modal's ``App.lookup`` returns it.

``App.lookup(name, create_if_missing=True)`` is how Modal code gets an app for sandboxes;
``App(name)`` also works here and is created in the engine on first use.  ``with
app.run():`` runs it as Modal runs an ephemeral app: the sandboxes created in it are
terminated when the block ends.  ``image=``, ``secrets=`` and ``volumes=`` are Modal's
defaults for an app's Functions, which hutch does not run: they are kept (``app.image``),
and sandboxes are not given them, as in Modal.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

from hutch.api import urls
from hutch.exception import InvalidError
from hutch.sdk import appentries
from hutch.sdk.appentries import LocalEntrypoint, UnrunnableFunction
from hutch.sdk.apptypes import AppInfo
from hutch.sdk.createrequest import create_request
from hutch.sdk.logs import AppLogsManager
from hutch.sdk.options import (
    DASHBOARD,
    check_object_name,
    check_tag_dict,
    refuse_platform,
    reject_unsupported,
)
from hutch.sdk.pool import WarmPool
from hutch.sdk.syncbridge import (
    run_sync,
    synchronize,
    synchronize_generator,
    synchronize_static,
)
from hutch.sdk.transport import client

if TYPE_CHECKING:
    from hutch.sdk.image import Image
    from hutch.sdk.secret import Secret
    from hutch.sdk.volume import Volume


class App:
    """An app: sandboxes are created in one and looked up by name within it."""

    def __init__(self, name: str | None = None, *, tags: Mapping[str, str] | None = None,
                 image: Image | None = None, secrets: Sequence[Secret] = (),
                 volumes: Mapping[str | os.PathLike[str], Volume] | None = None,
                 include_source: bool = True, app_id: str | None = None) -> None:
        if name is not None:
            check_object_name(name, "App")
        self.name = name
        self._app_id = app_id
        #: Modal's defaults for the app's Functions (sandboxes do not take them)
        self.image = image
        self.secrets = list(secrets)
        self.volumes = dict(volumes or {})
        if tags is not None:
            check_tag_dict(tags)
        self.tags = dict(tags or {})
        self.include_source = include_source
        #: this program runs it (``app.run()``)
        self._running = False
        self._entrypoints: dict[str, LocalEntrypoint] = {}
        self._functions: dict[str, UnrunnableFunction] = {}

    # what a program declares besides sandboxes (hutch.sdk.appentries) ------------------
    @property
    def description(self) -> str | None:
        return self.name

    @property
    def registered_entrypoints(self) -> dict[str, LocalEntrypoint]:
        return self._entrypoints

    @property
    def registered_functions(self) -> dict[str, UnrunnableFunction]:
        return self._functions

    @property
    def registered_classes(self) -> dict[str, Any]:
        return {}

    @property
    def registered_web_endpoints(self) -> list[str]:
        return []

    def local_entrypoint(self, _warn_parentheses_missing: Any = None, *,
                         name: str | None = None
                         ) -> Callable[[Callable[..., Any]], LocalEntrypoint]:
        """Mark the function ``python -m hutch.modal run`` calls (Modal's ``modal run``)."""
        if _warn_parentheses_missing is not None:
            raise InvalidError("Did you forget parentheses? Use @app.local_entrypoint().")

        def register(fn: Callable[..., Any]) -> LocalEntrypoint:
            entry = LocalEntrypoint(fn, name or fn.__qualname__)
            self._entrypoints[entry.name] = entry
            return entry

        return register

    def function(self, _warn_parentheses_missing: Any = None, **options: Any
                 ) -> Callable[[Callable[..., Any]], UnrunnableFunction]:
        """Modal's Functions do not run here: the function is kept, ``.local()`` runs it,
        ``.remote()`` and the like raise :class:`InvalidError`."""
        if _warn_parentheses_missing is not None:
            raise InvalidError("Did you forget parentheses? Use @app.function().")

        def register(fn: Callable[..., Any]) -> UnrunnableFunction:
            declared = UnrunnableFunction(fn, options.get("name") or fn.__qualname__)
            self._functions[declared.name] = declared
            return declared

        return register

    def cls(self, _warn_parentheses_missing: Any = None, **options: Any) -> NoReturn:
        """Modal's classes do not run here: :class:`InvalidError`."""
        appentries.refuse("App.cls")

    def server(self, _warn_parentheses_missing: Any = None, **options: Any) -> NoReturn:
        """Modal's servers do not run here: :class:`InvalidError`."""
        appentries.refuse("App.server")

    def deploy(self, *, name: str | None = None, environment_name: str | None = None,
               tag: str = "", client: Any = None, strategy: str = "rolling") -> NoReturn:
        """Nothing to deploy: hutch's apps are namespaces of sandboxes, made on first use."""
        appentries.refuse("App.deploy")

    def include(self, other_app: App, inherit_tags: bool = True) -> App:
        """Take ``other_app``'s entrypoints and Functions (and tags)."""
        self._entrypoints.update(other_app._entrypoints)
        self._functions.update(other_app._functions)
        if inherit_tags:
            self.tags = {**other_app.tags, **self.tags}
        return self

    @property
    def run(self) -> _RunFace:
        """``with app.run():`` (or ``async with app.run.aio():``) runs the app for the
        block, as Modal runs an ephemeral app: its sandboxes still running at the end are
        terminated, unless ``detach=True``.  An app without a name gets
        ``ephemeral-<hex>``."""
        return _RunFace(self)

    @synchronize
    async def stop(self, *, client: Any = None) -> None:
        """Terminate the app's running sandboxes and mark it stopped (Modal's
        ``App.stop``); a sandbox created in it later makes it in use again."""
        reject_unsupported({"client": client}, "App.stop")
        await _engine().request("POST", urls.APP_STOP.format(app_id=self._require_id("stop")))

    # the app's record in the engine ------------------------------------------------------
    def _require_id(self, method: str) -> str:
        """The app's id, or Modal's :class:`InvalidError` for an app that has none yet."""
        if self._app_id is None:
            raise InvalidError(f"`App.{method}` requires the App to have an ID: run it "
                               "(`with app.run():`) or use `App.lookup(name)`")
        return self._app_id

    @synchronize
    async def set_tags(self, tags: Mapping[str, str], *, client: Any = None) -> None:
        """Replace the app's tags (Modal's: not merged with those it had)."""
        reject_unsupported({"client": client}, "App.set_tags")
        check_tag_dict(tags)
        await _engine().request("PUT", urls.APP_TAGS.format(app_id=self._require_id(
            "set_tags")), json_body={"tags": dict(tags)})

    @synchronize
    async def get_tags(self, *, client: Any = None) -> dict[str, str]:
        reject_unsupported({"client": client}, "App.get_tags")
        found = await _engine().request("GET", urls.APP.format(
            app_id=self._require_id("get_tags")))
        return dict(found["tags"])

    @synchronize
    async def info(self, refresh: bool = False) -> AppInfo:
        """The app's id, name (``description``) and lifecycle (:mod:`hutch.sdk.apptypes`)."""
        found = await _engine().request("GET", urls.APP.format(app_id=self._require_id("info")))
        return AppInfo.from_engine(found, running=self._running)

    @property
    def logs(self) -> AppLogsManager:
        """The output of the app's sandboxes as timed entries: ``fetch``, ``tail``,
        ``stream`` (:mod:`hutch.sdk.logs`)."""
        app_id = self._require_id("logs")

        async def scope() -> dict[str, str]:
            return {"app_id": app_id}

        return AppLogsManager(scope, lambda: app_id)

    @property
    def sandboxes(self) -> AppSandboxesManager:
        return AppSandboxesManager(self)

    @synchronize
    async def stats(self, *, since: datetime | None = None, until: datetime | None = None
                    ) -> NoReturn:
        """Modal's usage statistics of Functions, servers and sandboxes come from its
        billing: hutch keeps none, :class:`InvalidError`."""
        refuse_platform("App.stats", "usage statistics come from Modal's billing")

    @synchronize
    async def get_dashboard_url(self) -> NoReturn:
        refuse_platform("App.get_dashboard_url", DASHBOARD)

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


class _RunFace:
    """``app.run(...)`` and ``app.run.aio(...)``: the same context manager, which works
    with ``with`` and with ``async with``."""

    def __init__(self, app: App) -> None:
        self.app = app

    def __call__(self, *, name: str | None = None, client: Any = None, detach: bool = False,
                 interactive: bool = False, environment_name: str | None = None) -> _AppRun:
        reject_unsupported({"client": client, "environment_name": environment_name},
                           "App.run")
        if name is not None:
            check_object_name(name, "App")
            self.app.name = name
        return _AppRun(self.app, detach)

    aio = __call__


class _AppRun:
    """What ``app.run()`` returns: a context manager for blocking and for async code."""

    def __init__(self, app: App, detach: bool) -> None:
        self.app = app
        self.detach = detach

    @asynccontextmanager
    async def aio(self) -> AsyncIterator[App]:
        if self.app.name is None and self.app.app_id is None:
            self.app.name = f"ephemeral-{uuid.uuid4().hex[:16]}"
        await self.app.resolve_id()
        if self.app.tags:  # the constructor's, as Modal gives them to the app it runs
            await self.app.set_tags.aio(self.app.tags)
        self.app._running = True
        try:
            yield self.app
        finally:
            self.app._running = False
            if not self.detach:
                await self.app.stop.aio()

    @contextmanager
    def _blocking(self) -> Iterator[App]:
        manager = self.aio()
        app = run_sync(manager.__aenter__)
        try:
            yield app
        except BaseException as exc:
            if not run_sync(manager.__aexit__, type(exc), exc, exc.__traceback__):
                raise
        else:
            run_sync(manager.__aexit__, None, None, None)

    def __enter__(self) -> App:
        self._entered = self._blocking()
        return self._entered.__enter__()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool | None:
        return self._entered.__exit__(kind, exc, tb)

    async def __aenter__(self) -> App:
        self._async = self.aio()
        return await self._async.__aenter__()

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        return await self._async.__aexit__(kind, exc, tb)


class AppSandboxesManager:
    """``app.sandboxes``: Modal's per-sandbox statistics of cost, which hutch has not."""

    def __init__(self, app: App) -> None:
        self._app = app

    @synchronize_generator
    async def stats(self, *, since: datetime, until: datetime | None = None,
                    group_by_tags: Sequence[str] | None = None,
                    tags: dict[str, str] | None = None) -> AsyncIterator[Any]:
        refuse_platform("App.sandboxes.stats", "sandbox costs come from Modal's billing")
        yield  # (an async generator, as Modal's)


_engine = client
