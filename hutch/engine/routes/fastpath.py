"""The hot API calls answered without FastAPI's machinery.

An ``exec`` is two calls (start it, wait for it), and profiling the engine under a stream
of them put half of its CPU time in FastAPI and Starlette: middleware, routing over every
route, dependency resolution, validation of the response against its model.  This ASGI
wrapper answers the few calls on that path itself (and creates, which a warm pool makes
as quick as an exec): the same handlers of the sandbox manager, the same request and
response models (validated by pydantic directly), the same error bodies.  Whatever it
does not recognise, or cannot parse, goes to the FastAPI app untouched (with the body it
read), so bad input gets exactly the answer it got before and the OpenAPI schema stays
the app's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import trio
from pydantic import BaseModel, ValidationError

from hutch.api.errors import STATUS
from hutch.api.models import (
    MAX_FILE_OFFSET,
    NDJSON,
    CreateSandboxRequest,
    ErrorBody,
    ExecRequest,
)
from hutch.engine.errors import EngineError, Invalid
from hutch.engine.lifecycle.manager import SandboxManager
from hutch.engine.routes.common import DEFAULT_WAIT, MAX_WAIT, health_answer
from hutch.engine.routes.execs import exec_events, exec_info, start_exec
from hutch.engine.routes.sandboxes import follow_logs, sandbox_info

log = logging.getLogger("hutch.fastpath")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Bodies larger than this go to the FastAPI app (and its limits).
MAX_BODY = 1 << 20


class Delegate(Exception):
    """Let the FastAPI app answer this call."""


class FastPath:
    """ASGI app: the hot calls here, everything else to ``app``."""

    def __init__(self, app: ASGIApp, manager: SandboxManager) -> None:
        self.app = app
        self.manager = manager

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._route(scope) if scope["type"] == "http" else None
        if route is None:
            return await self.app(scope, receive, send)
        body, complete = await _read_body(receive)
        if body is None:
            return  # the client left before sending its request
        try:
            if not complete:
                raise Delegate
            status, payload = await route(scope, body)
            if isinstance(payload, AsyncIterator):
                return await _stream(send, receive, payload)
        except Delegate:
            return await self.app(scope, _replay(body, complete, receive), send)
        except EngineError as exc:
            status, payload = STATUS[exc.type], ErrorBody(type=exc.type, message=exc.message)
        except Exception as exc:  # the app's catch-all answers the same way
            log.exception("unexpected error", exc_info=exc)
            status, payload = 500, ErrorBody(
                type="engine", message=f"internal engine error: {type(exc).__name__}: {exc}")
        data = payload.model_dump_json().encode() if isinstance(payload, BaseModel) \
            else json.dumps(payload, separators=(",", ":")).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    def _route(self, scope: Scope) -> Callable[[Scope, bytes], Awaitable[tuple[int, Any]]] | None:
        method, parts = scope["method"], scope["path"].split("/")
        # "/v1/execs/ID/wait" splits into ["", "v1", "execs", "ID", "wait"]
        if len(parts) < 3 or parts[1] != "v1" or "" in parts[2:]:
            return None
        if method == "GET" and parts[2:] == ["health"]:
            return self._health
        if method == "POST" and parts[2:] == ["sandboxes"]:
            return self._create_sandbox
        if method == "POST" and len(parts) == 5 and parts[2] == "sandboxes" \
                and parts[4] == "execs":
            return self._create_exec
        if len(parts) >= 4 and parts[2] == "execs":
            if method == "GET" and len(parts) == 4:
                return self._get_exec
            if method == "POST" and len(parts) == 5 and parts[4] == "wait":
                return self._wait_exec
            if method == "GET" and len(parts) == 5 and parts[4] == "output":
                return self._exec_output
        if method == "GET" and len(parts) == 5 and parts[2] == "sandboxes" \
                and parts[4] == "logs":
            return self._logs
        return None

    async def _health(self, scope: Scope, body: bytes) -> tuple[int, Any]:
        return 200, health_answer()

    async def _create_sandbox(self, scope: Scope, body: bytes) -> tuple[int, Any]:
        if scope.get("query_string"):
            raise Delegate
        try:  # as FastAPI does: the parsed JSON, validated in python mode
            req = CreateSandboxRequest.model_validate(json.loads(body))
        except (ValueError, ValidationError):
            raise Delegate from None
        return 200, sandbox_info(await self.manager.create(req))

    async def _create_exec(self, scope: Scope, body: bytes) -> tuple[int, Any]:
        try:
            req = ExecRequest.model_validate_json(body)
        except ValidationError:
            raise Delegate from None
        return 200, await start_exec(self.manager, scope["path"].split("/")[3], req)

    async def _get_exec(self, scope: Scope, body: bytes) -> tuple[int, Any]:
        return 200, exec_info(self.manager.exec_session(scope["path"].split("/")[3]))

    async def _wait_exec(self, scope: Scope, body: bytes) -> tuple[int, Any]:
        timeout = _wait_timeout(scope)
        session = self.manager.exec_session(scope["path"].split("/")[3])
        with trio.move_on_after(timeout):
            await session.done.wait()
        return 200, exec_info(session)


    async def _exec_output(self, scope: Scope, body: bytes) -> tuple[int, Any]:
        query = _query(scope, {"fd"})
        fd = _fd(query.get("fd"))
        session = self.manager.exec_session(scope["path"].split("/")[3])
        return 200, exec_events(session, fd)

    async def _logs(self, scope: Scope, body: bytes) -> tuple[int, Any]:
        query = _query(scope, {"fd", "follow", "offset"})
        fd = _fd(query.get("fd"))
        follow = _BOOLS.get(query.get("follow", "true").lower())
        offset = query.get("offset", "0")
        if follow is None or not offset.isdigit() or int(offset) > MAX_FILE_OFFSET:
            raise Delegate
        sandbox_id = scope["path"].split("/")[3]
        self.manager.get(sandbox_id)
        if int(offset) and fd is None:
            raise Invalid("offset needs fd: each stream has its own offset")
        return 200, follow_logs(self.manager, sandbox_id, follow, fd, int(offset))


_BOOLS = {"true": True, "1": True, "yes": True, "on": True,
          "false": False, "0": False, "no": False, "off": False}


def _query(scope: Scope, known: set[str]) -> dict[str, str]:
    """The query's parameters (the last of each); unknown or repeated ones go to the app."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    if not set(query) <= known or any(len(v) > 1 for v in query.values()):
        raise Delegate
    return {k: v[0] for k, v in query.items()}


def _fd(value: str | None) -> int | None:
    if value is None:
        return None
    if value not in ("1", "2"):
        raise Delegate
    return int(value)


def _wait_timeout(scope: Scope) -> float:
    value = _query(scope, {"timeout"}).get("timeout")
    if value is None:
        return DEFAULT_WAIT
    try:
        timeout = float(value)
    except ValueError:
        raise Delegate from None
    if not math.isfinite(timeout) or not 0 <= timeout <= MAX_WAIT:
        raise Delegate
    return timeout


async def _stream(send: Send, receive: Receive, events: AsyncIterator[bytes]) -> None:
    """An NDJSON answer, each event sent as it comes (the server frames it in chunks).  A
    client that leaves stops it at once, as Starlette's streams do: a followed log could
    otherwise wait for output that never comes, holding its files."""
    closing = contextlib.aclosing(events)  # type: ignore[type-var]
    async with closing, trio.open_nursery() as nursery:
        async def until_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            nursery.cancel_scope.cancel()

        nursery.start_soon(until_disconnect)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", NDJSON.encode())]})
        async for event in events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        nursery.cancel_scope.cancel()


async def _read_body(receive: Receive) -> tuple[bytes | None, bool]:
    """The body (None if the client left), and whether it is all there: reading stops
    past ``MAX_BODY``."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None, False
        chunk = message.get("body", b"")
        size += len(chunk)
        chunks.append(chunk)
        more = bool(message.get("more_body", False))
        if not more or size > MAX_BODY:
            return b"".join(chunks), not more


def _replay(body: bytes, complete: bool, receive: Receive) -> Receive:
    """``receive`` for the app: first what was read, then the rest of the request."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": not complete}
        return await receive()
    return replay
