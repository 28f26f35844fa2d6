"""``hutch.App``: a named namespace of sandboxes, as Modal's ``App.lookup`` returns it."""

from __future__ import annotations

from hutch.exception import InvalidError
from hutch.sdk.transport import default_client


class App:
    def __init__(self, name: str | None = None, *, app_id: str | None = None) -> None:
        self.name = name
        self._app_id = app_id

    @property
    def app_id(self) -> str:
        if self._app_id is None:
            if self.name is None:
                raise InvalidError("an App needs a name or an id")
            found = App.lookup(self.name, create_if_missing=True)
            self._app_id = found.app_id
        return self._app_id

    @staticmethod
    def lookup(name: str, *, create_if_missing: bool = False) -> App:
        if not isinstance(name, str) or not name:
            raise InvalidError("App.lookup needs a non-empty name")
        body = default_client().request(
            "POST", "/v1/apps/lookup", json_body={"name": name,
                                                  "create_if_missing": create_if_missing},
        )
        return App(body["name"], app_id=body["app_id"])

    def __repr__(self) -> str:
        return f"App({self.name!r}, app_id={self._app_id!r})"
