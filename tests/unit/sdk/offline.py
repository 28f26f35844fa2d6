"""Calling the SDK with no engine: what it would send is caught, never sent.

:func:`offline_sdk` (an autouse fixture where it is imported) replaces
:class:`~hutch.sdk.transport.EngineClient`'s sending methods with ones that raise
:class:`RequestSent` carrying the request, and points the SDK at a runtime directory with no
socket, so that nothing could start an engine either.  :func:`outcome` runs a call and tells
whether it was refused (InvalidError, or TypeError as Modal raises for some wrong types)
before sending, or what it sent; :func:`check` asserts that the engine's own wire model
takes what was sent.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from hutch.exception import InvalidError
from hutch.sdk import transport
from hutch.sdk.sandbox import Sandbox

SANDBOX_ID = "sb-" + "A" * 22


class RequestSent(Exception):
    """What the stand-in client raises instead of sending a request."""

    def __init__(self, method: str, path: str, body: Any = None,
                 params: dict[str, Any] | None = None) -> None:
        super().__init__(f"{method} {path}")
        self.method, self.path, self.body, self.params = method, path, body, params


async def _request(self: Any, method: str, path: str, *, json_body: Any = None,
                   params: dict[str, Any] | None = None, content: Any = None) -> Any:
    raise RequestSent(method, path, json_body, params)


async def _stream(self: Any, path: str, params: dict[str, Any] | None = None,
                  method: str = "GET", json_body: Any = None) -> Any:
    raise RequestSent(method, path, json_body, params)
    yield  # an async generator, like the methods it stands in for


async def _ensure(self: Any) -> None:
    raise RequestSent("GET", "/v1/health")


@pytest.fixture(autouse=True)
def offline_sdk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("HUTCH_RUNTIME_DIR", str(tmp_path / "no-engine"))
    monkeypatch.setenv("HUTCH_DATA_DIR", str(tmp_path / "no-data"))
    transport.forget_clients()
    monkeypatch.setattr(transport.EngineClient, "ensure", _ensure)
    monkeypatch.setattr(transport.EngineClient, "request", _request)
    monkeypatch.setattr(transport.EngineClient, "stream_events", _stream)
    monkeypatch.setattr(transport.EngineClient, "stream_bytes", _stream)
    yield
    transport.forget_clients()


def outcome(call: Callable[[], object], api: str) -> RequestSent | None:
    """None when the call (to ``api``) was refused before sending; else the request it
    sent.  Any other exception (an OverflowError, say) escapes: it is a bug."""
    try:
        call()
    except (InvalidError, TypeError):
        return None
    except RequestSent as sent:
        return sent
    except ValueError as exc:  # Modal's own choice for this one
        if "line-buffering is only supported when text=True" in str(exc):
            return None
        raise
    raise AssertionError(f"{api}: the call neither sent a request nor refused its arguments")


def engine_errors(model: type[BaseModel], body: Any) -> set[str]:
    """The fields of ``body`` the engine's model refuses (empty when it is valid), as
    dotted paths without list indices (``steps.run.commands``)."""
    try:  # as httpx encodes a json= body
        encoded = json.dumps(body, ensure_ascii=False, separators=(",", ":"),
                             allow_nan=False).encode()
    except (TypeError, ValueError):  # UnicodeEncodeError too (a lone surrogate)
        return {"(not JSON)"}  # httpx raises it: neither refused nor sent
    try:
        model.model_validate_json(encoded)
    except ValidationError as exc:
        return {".".join(str(p) for p in e["loc"] if not isinstance(p, int)) or "(model)"
                for e in exc.errors()}
    return set()


def check(api: str, model: type[BaseModel], body: Any) -> None:
    """``body``, which ``api`` sent, is what the engine's ``model`` takes."""
    refused = engine_errors(model, body)
    assert not refused, f"{api} sent what the engine refuses ({refused}): {body!r}"


def a_sandbox() -> Sandbox:
    """A sandbox object as ``Sandbox.from_id`` would give (nothing asks the engine)."""
    return Sandbox({"sandbox_id": SANDBOX_ID, "state": "running"})

