"""The engine's HTTP API (JSON over a Unix socket), described by OpenAPI at /openapi.json.

Handlers are thin: they validate with the wire models of :mod:`hutch.api.models`, call the
sandbox manager, and translate :class:`hutch.engine.errors.EngineError` into an
:class:`ErrorBody` with its status.  Output streams are NDJSON, one event per line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from hutch import __version__
from hutch.api import urls
from hutch.api.enginemodels import EngineInfo
from hutch.api.errors import STATUS
from hutch.api.models import (
    ErrorBody,
    document_error_bodies,
)
from hutch.engine.errors import EngineError
from hutch.engine.httpd.server import ClientDisconnected
from hutch.engine.lifecycle.manager import SandboxManager
from hutch.engine.routes.apps import add_app_routes
from hutch.engine.routes.common import health_answer
from hutch.engine.routes.execs import add_exec_routes
from hutch.engine.routes.files import add_file_routes
from hutch.engine.routes.images import add_image_routes
from hutch.engine.routes.networks import add_network_routes
from hutch.engine.routes.pools import add_pool_routes
from hutch.engine.routes.sandboxes import add_sandbox_routes
from hutch.engine.routes.snapshots import add_snapshot_routes
from hutch.engine.routes.volumes import add_volume_routes

log = logging.getLogger("hutch.server")


#: The ErrorBody type of a status that the framework answers by itself.
_HTTP_ERROR_TYPES = {404: "not_found", 409: "conflict", 500: "engine", 504: "timeout"}


def _error(status: int, type_: str, message: str) -> JSONResponse:
    body = ErrorBody(type=type_, message=message)  # type: ignore[arg-type]
    return JSONResponse(body.model_dump(), status_code=status)


def build_app(manager: SandboxManager, info: Callable[[], EngineInfo],
              shutdown: Callable[[], None]) -> FastAPI:
    app = FastAPI(title="hutch engine", version=__version__,
                  description="Local rootless sandboxes; the API behind the hutch SDK.")

    @app.exception_handler(EngineError)
    async def _engine_error(_: Request, exc: EngineError) -> JSONResponse:
        return _error(STATUS[exc.type], exc.type, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return _error(422, "invalid", "; ".join(parts))

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        """FastAPI's and Starlette's own refusals (an unparsable body, an unknown route, a
        method a route lacks) as ErrorBodies too, so that every error has one shape."""
        return _error(exc.status_code, _HTTP_ERROR_TYPES.get(exc.status_code, "invalid"),
                      str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, ClientDisconnected):  # a client that left a stream: no error here
            log.debug("client left: %s", exc)
        else:
            log.exception("unexpected error", exc_info=exc)
        return _error(500, "engine", f"internal engine error: {type(exc).__name__}: {exc}")

    # engine ---------------------------------------------------------------------------------
    @app.get(urls.HEALTH)
    async def health() -> dict[str, str]:
        return health_answer()

    @app.get(urls.ENGINE)
    async def engine_info() -> EngineInfo:
        return info()

    @app.post(urls.ENGINE_SHUTDOWN)
    async def engine_shutdown() -> dict[str, str]:
        await manager.shutdown_all()
        shutdown()
        return {"status": "stopping"}

    add_image_routes(app, manager)
    add_sandbox_routes(app, manager)
    add_app_routes(app, manager)
    add_exec_routes(app, manager)
    add_file_routes(app, manager)
    add_snapshot_routes(app, manager)
    if manager.pools is not None:
        add_pool_routes(app, manager.pools)
    add_volume_routes(app, manager.volumes)
    add_network_routes(app, manager)
    framework_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_error_bodies(framework_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
