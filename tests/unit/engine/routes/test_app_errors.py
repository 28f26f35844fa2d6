"""Regression tests for what the API fuzzing run (tests/integration/test_api_fuzz.py) found.

The engine's app is served in-process (httpx's ASGI transport under trio) around a stub
manager whose one "sandbox" is this very process, rooted at the host's ``/``, so the file
and log routes run for real without namespaces.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import trio
from fastapi import FastAPI
from pydantic import ValidationError

from hutch.api.models import (
    MAX_FILE_OFFSET,
    NDJSON,
    CreateSandboxRequest,
    document_error_bodies,
)
from hutch.engine.files.fileops import FileOps
from hutch.engine.kernel import linux
from hutch.engine.routes.app import build_app

ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}


class _StubManager:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.volumes = SimpleNamespace(ops=FileOps())  # (its routes' worker threads)
        self.pools = None
        self.networks = None
        self.state = "running"
        self.live = {"sb-x": SimpleNamespace(pid=os.getpid(), workdir="/", terminating=False,
                                             done=trio.Event(), owner=None)}

    def get(self, sandbox_id: str) -> SimpleNamespace:
        return SimpleNamespace(state=self.state, returncode=0)

    def dirs(self, sandbox_id: str) -> SimpleNamespace:
        return SimpleNamespace(stdout=self.logs / "stdout", stderr=self.logs / "stderr")


def _call(app: Any, method: str, url: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://engine") as client:
            return await client.request(method, url, **kwargs)

    runner: Callable[[], Coroutine[Any, Any, httpx.Response]] = go
    return trio.run(runner)


@pytest.fixture
def manager(tmp_path: Path) -> _StubManager:
    return _StubManager(tmp_path)


@pytest.fixture
def app(manager: _StubManager) -> Any:
    return build_app(manager, lambda: None, lambda: None)  # type: ignore[arg-type]


def _operations(app: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{method.upper()} {path}", op)
            for path, item in app.openapi()["paths"].items() for method, op in item.items()]


def test_every_error_answer_is_documented_as_an_error_body(app: Any) -> None:
    # FastAPI documented its 422s as HTTPValidationError, whose shape the engine never sends.
    assert "HTTPValidationError" not in json.dumps(app.openapi())
    for label, operation in _operations(app):
        for status, answer in operation["responses"].items():
            if int(status) >= 400:
                assert answer["content"]["application/json"]["schema"] == ERROR_BODY, label


def test_a_route_that_declares_no_errors_gets_the_common_ones() -> None:
    # A route module's undeclared 404s were "undocumented status codes" to the fuzzer.
    plain = FastAPI()

    @plain.get("/things/{thing_id}")
    async def thing(thing_id: str) -> dict[str, str]:
        return {}

    answers = document_error_bodies(plain.openapi())["paths"]["/things/{thing_id}"]["get"][
        "responses"]
    assert set(answers) == {"200", "400", "404", "409", "422"}
    for status in ("400", "404", "409", "422"):
        assert answers[status]["content"]["application/json"]["schema"] == ERROR_BODY


def test_streams_document_their_media_type(app: Any) -> None:
    media = {label: set(op["responses"]["200"]["content"]) for label, op in _operations(app)}
    for label in ("GET /v1/sandboxes/{sandbox_id}/logs", "GET /v1/execs/{exec_id}/output",
                  "GET /v1/sandboxes/{sandbox_id}/fs/watch", "POST /v1/images/build"):
        assert media[label] == {NDJSON}, label
    for label in ("GET /v1/sandboxes/{sandbox_id}/fs/file", "GET /v1/volumes/{name}/file"):
        assert media[label] == {"application/octet-stream"}, label


def test_an_unparsable_body_is_answered_with_an_error_body(app: Any) -> None:
    # It was FastAPI's {"detail": ...}, which the SDK could not map to InvalidError.
    answer = _call(app, "POST", "/v1/apps/lookup", content=b'["\x1b\xff\xfeZ&',
                   headers={"content-type": "application/json"})
    assert answer.status_code == 400
    assert answer.json()["type"] == "invalid"
    assert set(answer.json()) == {"type", "message"}


def test_an_unknown_route_is_answered_with_an_error_body(app: Any) -> None:
    answer = _call(app, "GET", "/v1/nothing-here")
    assert answer.status_code == 404
    assert answer.json()["type"] == "not_found"


def test_a_log_offset_beyond_the_largest_file_reads_nothing(app: Any, manager: _StubManager
                                                             ) -> None:
    # The log was seeked to the offset, after the headers: lseek past the file system's
    # largest file (ext4: 16 TiB) failed with EINVAL and broke the stream off.
    (manager.logs / "stdout").write_bytes(b"hello\n")
    manager.state = "exited"
    manager.live.clear()
    for offset, data in ((MAX_FILE_OFFSET, None), (2, "llo\n")):
        answer = _call(app, "GET", "/v1/sandboxes/sb-x/logs",
                       params={"fd": 1, "offset": offset, "follow": "false"})
        assert answer.status_code == 200
        events = [json.loads(line) for line in answer.text.splitlines()]
        assert events[-1] == {"exit_code": 0}
        if data is not None:
            assert events[0]["fd"] == 1
            assert base64.b64decode(events[0]["data"]).decode() == data
        else:
            assert len(events) == 1
    too_far = _call(app, "GET", "/v1/sandboxes/sb-x/logs",
                    params={"fd": 1, "offset": MAX_FILE_OFFSET + 1})
    assert too_far.status_code == 422


def test_file_offsets_are_bounded(app: Any, tmp_path: Path) -> None:
    # A write offset beyond a C long raised OverflowError (500); a read offset near 2**63
    # overflowed the kernel's offset + length and broke the stream off after its headers.
    target = tmp_path / "file"
    target.write_bytes(b"data")
    far = _call(app, "GET", "/v1/sandboxes/sb-x/fs/file",
                params={"path": str(target), "offset": MAX_FILE_OFFSET})
    assert (far.status_code, far.content) == (200, b"")
    for method in ("GET", "PUT"):
        answer = _call(app, method, "/v1/sandboxes/sb-x/fs/file",
                       params={"path": str(target), "offset": 1 << 70, "mode": "r+"},
                       content=b"x")
        assert answer.status_code == 422, answer.text
    beyond_ext4 = _call(app, "PUT", "/v1/sandboxes/sb-x/fs/file",
                        params={"path": str(target), "offset": MAX_FILE_OFFSET, "mode": "r+"},
                        content=b"x")
    assert beyond_ext4.status_code == 400
    assert beyond_ext4.json()["type"] == "file_error"


def test_a_directory_inotify_refuses_is_a_typed_error(app: Any, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # inotify_add_watch's EACCES (a recursive watch reaching into /proc, unprivileged) was
    # a 500.
    def refuse(fd: int, path: str, mask: int) -> int:
        raise OSError(13, f"inotify_add_watch {path}: Permission denied")

    monkeypatch.setattr(linux, "inotify_add", refuse)
    answer = _call(app, "GET", "/v1/sandboxes/sb-x/fs/watch",
                   params={"path": str(tmp_path), "timeout": 0.1})
    assert answer.status_code == 403
    assert answer.json()["type"] == "permission_denied"
    assert "/proc/self/fd" not in answer.json()["message"]


@pytest.mark.parametrize("body", [
    {"app_name": ""}, {"app_name": "a/b"}, {"app_name": "x" * 65},
    {"volumes": {"/mnt\0/etc": {"name": "v"}}},
])
def test_create_refuses_what_the_engine_cannot_use(body: dict[str, Any]) -> None:
    # Both were accepted: an app with any name at all, and a mount path that crun cut at
    # the NUL byte (mounting the volume at /mnt).
    with pytest.raises(ValidationError):
        CreateSandboxRequest.model_validate_json(json.dumps(body))


def test_every_engine_error_type_is_a_wire_error_and_an_sdk_exception() -> None:
    """An engine error whose type the wire model did not list became a 500 (the
    ResourceExhaustedError of a create with every id slice or disk slot in use did)."""
    from hutch import exception
    from hutch.api.models import ErrorBody
    from hutch.engine import errors
    from hutch.sdk.transport import _ERRORS

    def subclasses(cls: type) -> list[type]:
        return [cls, *[s for sub in cls.__subclasses__() for s in subclasses(sub)]]

    for cls in subclasses(errors.EngineError):
        body = ErrorBody(type=cls.type, message="m")
        assert body.type == cls.type
        assert cls.type in _ERRORS, cls
    assert _ERRORS["resource_exhausted"] is exception.ResourceExhaustedError
