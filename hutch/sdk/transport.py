"""The SDK's one transport: HTTP/1.1 + JSON to the engine's Unix socket, via httpx.

Like httpx's own transports it is thin: it sends requests and translates what comes back at
this boundary.  Engine error bodies become ``hutch.exception`` classes, connection failures
start the engine (once) and otherwise become :class:`EngineError`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx

from hutch import exception
from hutch.api import paths
from hutch.api.models import API_VERSION
from hutch.sdk import launcher

_ERRORS: dict[str, type[exception.Error]] = {
    "not_found": exception.NotFoundError,
    "already_exists": exception.AlreadyExistsError,
    "invalid": exception.InvalidError,
    "conflict": exception.ConflictError,
    "timeout": exception.TimeoutError,
    "image_build": exception.ImageBuildError,
    "engine": exception.EngineError,
}


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json()
        kind, message = body["type"], body["message"]
    except (ValueError, KeyError, TypeError):
        raise exception.EngineError(
            f"engine answered {response.status_code}: {response.text[:500]}"
        ) from None
    raise _ERRORS.get(kind, exception.EngineError)(message)


class EngineClient:
    """A connection pool to the engine, started on first use."""

    def __init__(self, autostart: bool = True) -> None:
        self.socket = paths.socket_path()
        self.autostart = autostart
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket)),
            base_url="http://hutch",
            timeout=httpx.Timeout(30.0, read=None),
        )
        self._checked = False

    def close(self) -> None:
        self._http.close()

    def _ready(self) -> bool:
        try:
            r = self._http.get("/v1/health", timeout=2.0)
        except httpx.TransportError:
            return False
        if r.status_code != 200:
            return False
        version = r.json().get("api_version")
        if version != API_VERSION:
            raise exception.EngineError(
                f"the running engine speaks API {version}, this SDK needs {API_VERSION}: "
                "stop it with `hutch engine stop`"
            )
        return True

    def _ensure(self) -> None:
        if self._checked:
            return
        if self.autostart:
            launcher.ensure_engine(self._ready)
        elif not self._ready():
            raise exception.EngineError(f"no hutch engine answers on {self.socket}")
        self._checked = True

    def request(self, method: str, path: str, *, json_body: Any = None,
                params: dict[str, Any] | None = None, content: bytes | None = None) -> Any:
        self._ensure()
        try:
            r = self._http.request(method, path, json=json_body, params=params, content=content)
        except httpx.TransportError as exc:
            self._checked = False
            raise exception.EngineError(f"lost the connection to the engine: {exc}") from exc
        _raise_for(r)
        return r.json()

    def stream_events(self, path: str, params: dict[str, Any] | None = None
                      ) -> Iterator[dict[str, Any]]:
        """Yield the NDJSON events of a stream, decoding ``data`` to bytes."""
        self._ensure()
        try:
            with self._http.stream("GET", path, params=params) as r:
                if not r.is_success:
                    r.read()
                    _raise_for(r)
                for line in r.iter_lines():
                    if not line:
                        continue
                    event: dict[str, Any] = json.loads(line)
                    if event.get("data") is not None:
                        event["data"] = base64.b64decode(event["data"])
                    yield event
        except httpx.TransportError as exc:
            self._checked = False
            raise exception.EngineError(f"lost the connection to the engine: {exc}") from exc


_default: EngineClient | None = None


def default_client() -> EngineClient:
    global _default
    if _default is None:
        _default = EngineClient()
    return _default
