"""The API's paths have one home (hutch/api/urls.py): every route the engine serves is one
of its templates, and every template is served, so the SDK (which fills the same
templates) cannot call a path the engine does not have."""

from __future__ import annotations

from pathlib import Path

from hutch.api import urls
from hutch.engine.routes.app import build_app
from tests.unit.engine.routes.test_app_errors import _StubManager


def _templates() -> set[str]:
    base = {v for k, v in vars(urls).items() if k.isupper() and isinstance(v, str)
            and v.startswith(urls.V1 + "/")}
    files = {v for k, v in vars(urls).items() if k.startswith("FS_")}
    base |= {urls.SANDBOX_FS + f for f in files - {urls.FS_COPY}}
    base |= {urls.VOLUME + f for f in (urls.FS_FILE, urls.FS_LIST, urls.FS_REMOVE,
                                       urls.FS_COPY)}
    return base - {urls.SANDBOX_FS}  # (a prefix, not a route)


def test_every_route_is_a_template_and_every_template_a_route(tmp_path: Path) -> None:
    manager = _StubManager(tmp_path)
    manager.pools = object()  # its routes are registered too
    app = build_app(manager, lambda: None, lambda: None)  # type: ignore[arg-type]
    served = {route.path for route in app.routes if route.path.startswith(urls.V1 + "/")}
    assert served == _templates(), (served ^ _templates())
