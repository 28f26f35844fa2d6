"""hutch.sdk.transport._raise_for: engine error bodies become hutch.exception classes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from hutch import exception
from hutch.api.errors import KINDS, STATUS
from hutch.engine import errors
from hutch.sdk.transport import _ERRORS, _raise_for

CASES = [
    ("not_found", 404, exception.NotFoundError),
    ("already_exists", 409, exception.AlreadyExistsError),
    ("invalid", 400, exception.InvalidError),
    ("conflict", 409, exception.ConflictError),
    ("timeout", 504, exception.TimeoutError),
    ("image_build", 500, exception.ImageBuildError),
    ("engine", 500, exception.EngineError),
    ("file_not_found", 404, exception.SandboxFilesystemNotFoundError),
    ("is_a_directory", 400, exception.SandboxFilesystemIsADirectoryError),
    ("not_a_directory", 400, exception.SandboxFilesystemNotADirectoryError),
    ("permission_denied", 403, exception.SandboxFilesystemPermissionError),
    ("file_exists", 409, exception.SandboxFilesystemPathAlreadyExistsError),
    ("directory_not_empty", 409, exception.SandboxFilesystemDirectoryNotEmptyError),
    ("file_busy", 409, exception.SandboxFilesystemBusyError),
    ("file_error", 400, exception.SandboxFilesystemError),
    ("resource_exhausted", 429, exception.ResourceExhaustedError),
    ("unauthorized", 401, exception.AuthError),
]


def _response(status: int, **kw: Any) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("GET", "http://hutch/v1/x"), **kw)


@pytest.mark.parametrize(("kind", "status", "cls"), CASES)
def test_error_types_map_to_classes(kind: str, status: int, cls: type[Exception]) -> None:
    with pytest.raises(exception.Error) as info:
        _raise_for(_response(status, json={"type": kind, "message": f"msg for {kind}"}))
    assert type(info.value) is cls
    assert str(info.value) == f"msg for {kind}"


@pytest.mark.parametrize("engine_error", [
    errors.NotFound, errors.AlreadyExists, errors.Invalid, errors.Conflict,
    errors.ImageBuildFailed, errors.EngineError, errors.Exhausted, errors.HostFault,
])
def test_every_engine_error_round_trips(engine_error: type[errors.EngineError]) -> None:
    """What the server answers for an engine error becomes the matching SDK class."""
    expected = {kind: cls for kind, _, cls in CASES}[engine_error.type]
    err = engine_error("it went wrong")
    with pytest.raises(exception.Error) as info:
        _raise_for(_response(STATUS[err.type], json={"type": err.type,
                                                      "message": err.message}))
    assert type(info.value) is expected
    assert str(info.value) == "it went wrong"


def test_engine_error_types_are_all_known() -> None:
    from hutch.api.models import ErrorBody

    wire_types = set(ErrorBody.model_fields["type"].annotation.__args__)  # type: ignore[union-attr]
    assert {kind for kind, _, _ in CASES} == wire_types == set(KINDS) == set(STATUS) \
        == set(_ERRORS)
    assert {kind: status for kind, status, _ in CASES} == STATUS  # one home for the statuses


def test_a_missing_host_part_is_the_engines_fault_not_the_callers() -> None:
    """slirp4netns or libnftables missing used to reach the caller as InvalidError."""
    from hutch.engine.network.netns import NetnsSetupFailed
    from hutch.engine.network.outbound import NetworkSetupFailed

    for cls in (NetworkSetupFailed, NetnsSetupFailed):
        err = cls("slirp4netns is not installed: apt-get install slirp4netns")
        assert (err.type, STATUS[err.type]) == ("engine", 500)
        with pytest.raises(exception.EngineError, match="apt-get install"):
            _raise_for(_response(500, json={"type": err.type, "message": err.message}))


@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_success_does_not_raise(status: int) -> None:
    _raise_for(_response(status, json={"type": "not_found", "message": "ignored"}))


def test_timeout_is_catchable_as_builtin() -> None:
    with pytest.raises(TimeoutError):
        _raise_for(_response(504, json={"type": "timeout", "message": "late"}))


def test_non_json_500_is_engine_error() -> None:
    with pytest.raises(exception.EngineError) as info:
        _raise_for(_response(500, text="Internal Server Error <html>"))
    assert type(info.value) is exception.EngineError
    assert "500" in str(info.value)
    assert "Internal Server Error" in str(info.value)


@pytest.mark.parametrize("body", [
    {"json": {"detail": "validation failed"}},  # FastAPI's 422 shape: no type/message
    {"json": ["a", "list"]},
    {"json": "a string"},
    {"content": b""},
])
def test_unexpected_bodies_are_engine_errors(body: dict[str, Any]) -> None:
    with pytest.raises(exception.EngineError) as info:
        _raise_for(_response(422, **body))
    assert type(info.value) is exception.EngineError
    assert "422" in str(info.value)


def test_unknown_type_is_engine_error() -> None:
    with pytest.raises(exception.EngineError) as info:
        _raise_for(_response(418, json={"type": "teapot", "message": "short and stout"}))
    assert type(info.value) is exception.EngineError
    assert str(info.value) == "short and stout"


def test_long_body_is_truncated() -> None:
    with pytest.raises(exception.EngineError) as info:
        _raise_for(_response(502, text="x" * 10_000))
    assert len(str(info.value)) < 1000
