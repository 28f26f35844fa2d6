"""Memory snapshots (hutch/sdk/memorysnapshot.py): Modal's calls exist with its signatures,
check their arguments, and ask the engine (``GET /v1/engine/checkpoint``) for the reason to
refuse, sending nothing else.  No engine runs (:mod:`tests.unit.sdk.offline` catches the
request); the reason the engine measures is tested where it is made
(tests/unit/engine/kernel/test_checkpoint.py) and relayed by a real engine in
tests/integration/test_memory_snapshots.py."""

from __future__ import annotations

import inspect
from typing import Any

import anyio
import pytest

from hutch.api import urls
from hutch.exception import ClientClosed, InvalidError
from hutch.sdk.sandbox import Sandbox
from tests.unit.sdk.offline import RequestSent, a_sandbox, offline_sdk  # noqa: F401 - autouse

ASKS_THE_ENGINE = f"GET {urls.ENGINE_CHECKPOINT}"


def _parameters(fn: Any) -> list[tuple[str, str, bool]]:
    return [(p.name, p.kind.name, p.default is not inspect.Parameter.empty)
            for p in inspect.signature(fn).parameters.values() if p.name != "self"]


def test_signatures_are_modals() -> None:
    """Modal 1.6.4: ``_experimental_snapshot(self)``, and the static
    ``_experimental_from_snapshot(snapshot, client=None, *, name=<keep>)``."""
    assert _parameters(Sandbox._experimental_snapshot.__wrapped__) == []  # type: ignore[attr-defined]
    static = inspect.getattr_static(Sandbox, "_experimental_from_snapshot")
    assert _parameters(static.__wrapped__) == [
        ("snapshot", "POSITIONAL_OR_KEYWORD", False), ("client", "POSITIONAL_OR_KEYWORD", True),
        ("name", "KEYWORD_ONLY", True)]
    assert callable(Sandbox._experimental_from_snapshot.aio)


def test_each_call_asks_the_engine_and_sends_nothing_else() -> None:
    """The reason is the engine's: the SDK probes nothing itself.  A create with the flag
    asks instead of creating (no ``POST /v1/sandboxes``)."""
    with pytest.raises(RequestSent) as asked:
        a_sandbox()._experimental_snapshot()
    assert (asked.value.method, asked.value.path) == ("GET", urls.ENGINE_CHECKPOINT)
    with pytest.raises(RequestSent, match=ASKS_THE_ENGINE):
        Sandbox._experimental_from_snapshot(object(), name="restored")
    with pytest.raises(RequestSent, match=ASKS_THE_ENGINE):
        Sandbox.create(_experimental_enable_snapshot=True)
    with pytest.raises(RequestSent, match="POST /v1/sandboxes"):  # off: create goes on
        Sandbox.create(_experimental_enable_snapshot=False)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_async_face_asks_alike(backend: str) -> None:
    async def calls() -> None:
        with pytest.raises(RequestSent, match=ASKS_THE_ENGINE):
            await a_sandbox()._experimental_snapshot.aio()
        with pytest.raises(RequestSent, match=ASKS_THE_ENGINE):
            await Sandbox._experimental_from_snapshot.aio(object())

    anyio.run(calls, backend=backend)


def test_arguments_and_detached_sandboxes_are_checked_first() -> None:
    with pytest.raises(InvalidError, match="Invalid Sandbox name"):
        Sandbox._experimental_from_snapshot(object(), name="a b")
    with pytest.raises(InvalidError, match="`client` is not supported"):
        Sandbox._experimental_from_snapshot(object(), client=object())
    sandbox = a_sandbox()
    sandbox.detach()
    with pytest.raises(ClientClosed):
        sandbox._experimental_snapshot()
