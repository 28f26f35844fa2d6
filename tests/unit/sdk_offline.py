"""Calling the SDK with no engine: what it would send is caught, never sent.

:func:`offline_sdk` (an autouse fixture where it is imported) replaces
:class:`~hutch.sdk.transport.EngineClient`'s sending methods with ones that raise
:class:`RequestSent` carrying the request, and points the SDK at a runtime directory with no
socket, so that nothing could start an engine either.  :func:`outcome` runs a call and tells
whether it was refused (InvalidError, or TypeError as Modal raises for some wrong types)
before sending, or what it sent; :func:`check` asserts that the engine's own wire model
takes what was sent, apart from the :data:`KNOWN_GAPS`.
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
    """None when the call was refused before sending; else the request it sent."""
    try:
        call()
    except (InvalidError, TypeError):
        return None
    except KNOWN_CRASHES.get(api, ()):
        return None
    except RequestSent as sent:
        return sent
    except ValueError as exc:  # Modal's own choice for this one
        if "line-buffering is only supported when text=True" in str(exc):
            return None
        raise
    raise AssertionError("the call neither sent a request nor refused its arguments")


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
    unexpected = engine_errors(model, body) - KNOWN_GAPS.get(api, set())
    assert not unexpected, f"{api} sent what the engine refuses ({unexpected}): {body!r}"


def a_sandbox() -> Sandbox:
    """A sandbox object as ``Sandbox.from_id`` would give (nothing asks the engine)."""
    return Sandbox({"sandbox_id": SANDBOX_ID, "state": "running"})


#: Checks the SDK does not make yet, found by these properties: the engine refuses such
#: a request (422) instead of the SDK raising InvalidError before sending it.  API -> the
#: wire fields concerned.  Each has a strict-xfail example in test_sdk_known_gaps.py,
#: which fails once the check is made: then remove the entry and the example.
KNOWN_GAPS: dict[str, set[str]] = {
    # "(not JSON)": a string with a lone surrogate, which httpx cannot encode (UTF-8).
    "Sandbox.create": {"timeout", "idle_timeout", "workdir", "entrypoint", "env", "cpu",
                       "cpu_limit", "memory", "memory_limit", "ephemeral_disk", "pids_limit",
                       "unencrypted_ports", "encrypted_ports", "volumes",
                       "readiness_probe.interval_ms", "(not JSON)"},
    "Sandbox.exec": {"argv", "env", "workdir", "timeout", "(not JSON)"},
    "Sandbox.set_tags": {"(not JSON)"},
    "Image": {"steps.run.commands", "steps.run.secret_env",
              "steps.config.entrypoint", "steps.config.cmd", "(not JSON)"},
    "Volume": {"volumes./data.sub_path"},
    "Volume.delete": {"name", "(not JSON)"},
}
#: Exceptions other than InvalidError that calls with some values raise (same rule): a
#: number no float can hold (``timeout=10**400``) raises OverflowError.
KNOWN_CRASHES: dict[str, tuple[type[Exception], ...]] = {
    "Sandbox.create": (OverflowError,), "Sandbox.exec": (OverflowError,),
    "Sandbox.wait_until_ready": (OverflowError,),
}
