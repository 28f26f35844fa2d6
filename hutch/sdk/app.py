"""``hutch.App``: a named namespace of sandboxes, as Modal's ``App.lookup`` returns it.

``App.lookup(name, create_if_missing=True)`` is how Modal code gets an app for sandboxes;
``App(name)`` also works here and is created in the engine on first use.
"""

from __future__ import annotations

from hutch.exception import InvalidError
from hutch.sdk.options import check_object_name
from hutch.sdk.syncbridge import synchronize_static
from hutch.sdk.transport import client


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
            "POST", "/v1/apps/lookup",
            json_body={"name": name, "create_if_missing": bool(create_if_missing)},
        )
        return App(body["name"], app_id=body["app_id"])

    def __repr__(self) -> str:
        return f"App({self.name!r}, app_id={self._app_id!r})"


_engine = client
