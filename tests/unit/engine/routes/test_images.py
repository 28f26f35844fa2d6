"""The image routes' push (``POST /v1/images/push``), served in-process around a stub
manager with a real image store and a stand-in skopeo: its answers and its error kinds,
credentials kept out of every error."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hutch.api import urls
from hutch.engine.routes.app import build_app
from hutch.imagebuild.layout import ImageStore
from tests.unit.engine.routes.test_app_errors import _call, _StubManager

DIGEST = "sha256:" + "cd" * 32
FAKE_SKOPEO = """#!/bin/sh
if [ -n "$FAKE_FAIL" ]; then echo "denied for $FAKE_FAIL" >&2; exit 1; fi
while [ $# -gt 0 ]; do
    if [ "$1" = --digestfile ]; then printf '%s' "$FAKE_DIGEST" > "$2"; fi
    shift
done
"""


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "skopeo").write_text(FAKE_SKOPEO)
    (bin_dir / "skopeo").chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DIGEST", DIGEST)
    monkeypatch.delenv("FAKE_FAIL", raising=False)
    manager = _StubManager(tmp_path)
    store = ImageStore(tmp_path / "data")
    store.write_image("hutch/step:abc", [], {})
    manager.images = SimpleNamespace(store=store)  # type: ignore[attr-defined]
    return build_app(manager, lambda: None, lambda: None)  # type: ignore[arg-type]


def _push(app: Any, **body: str) -> tuple[int, dict[str, Any]]:
    answer = _call(app, "POST", urls.IMAGES_PUSH, json=body)
    return answer.status_code, answer.json()


def test_a_push_answers_where_the_image_went(app: Any) -> None:
    assert _push(app, ref="hutch/step:abc", dest="docker://127.0.0.1:5000/x:1") == (
        200, {"ref": "hutch/step:abc", "dest": "127.0.0.1:5000/x:1", "digest": DIGEST})


def test_a_bad_destination_is_invalid_and_an_unknown_image_not_found(app: Any) -> None:
    status, body = _push(app, ref="hutch/step:abc", dest="oci:/tmp/x")
    assert (status, body["type"]) == (400, "invalid") and "not a registry reference" in \
        body["message"]
    status, body = _push(app, ref="hutch/none:1", dest="127.0.0.1:5000/x:1")
    assert (status, body["type"]) == (404, "not_found") and "hutch/none:1" in body["message"]


def test_a_failed_copy_is_a_build_error_without_the_credentials(
        app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_FAIL", "robot:hunter22")
    status, body = _push(app, ref="hutch/step:abc", dest="registry.example/x:1",
                         credentials="robot:hunter22")
    assert (status, body["type"]) == (500, "image_build")
    assert "denied for ***" in body["message"] and "hunter22" not in body["message"]


def test_malformed_credentials_are_refused_without_being_echoed(app: Any) -> None:
    status, body = _push(app, ref="hutch/step:abc", dest="h.example/x:1",
                         credentials="hunter22-no-user")
    assert (status, body["type"]) == (422, "invalid") and "hunter22" not in body["message"]


def test_the_push_documents_its_errors(app: Any) -> None:
    answers = app.openapi()["paths"][urls.IMAGES_PUSH]["post"]["responses"]
    assert {"400", "404", "422"} <= set(answers)
