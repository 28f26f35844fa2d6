"""The SDK's one transport: HTTP/1.1 + JSON to the engine, via ``http11``: on its Unix
socket, or a remote engine's (:mod:`.endpoint`: over TLS, or an ssh forward).

Like httpx's transports it is thin: it sends requests and translates what comes back at
this boundary.  Engine error bodies become ``hutch.exception`` classes; a socket nobody
answers on starts the engine (once, under a lock); other connection failures and an engine
speaking another API version become :class:`~hutch.exception.EngineError`.

After a crash of the engine (its socket refuses, or a connection closes before any answer)
a request is sent once more, to a restarted engine, when that cannot do it twice: when
nothing of it was sent, or when it changes nothing (``SAFE_METHODS``).  A create or an exec
the dead engine may have received is not repeated: it fails with
:class:`~hutch.exception.EngineRestartedError`, and the next call reaches the new engine.

A connection pool belongs to one event loop, so there is one :class:`EngineClient` per
running loop (:func:`client`): the portal's loop for blocking calls, and the caller's own
trio or asyncio loop for ``.aio`` calls; a thread making direct calls (see
``syncbridge``) has a :class:`DirectClient` of blocking sockets.  SDK objects hold ids,
never a client, so one ``Sandbox`` can be used from any loop or thread.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import sniffio

from hutch import exception
from hutch.api import urls
from hutch.api.models import API_VERSION
from hutch.sdk import endpoint, http11, launcher, syncbridge

_ERRORS: dict[str, type[exception.Error]] = {
    "not_found": exception.NotFoundError,
    "already_exists": exception.AlreadyExistsError,
    "invalid": exception.InvalidError,
    "conflict": exception.ConflictError,
    "timeout": exception.TimeoutError,
    "image_build": exception.ImageBuildError,
    "resource_exhausted": exception.ResourceExhaustedError,
    "engine": exception.EngineError,
    "file_not_found": exception.SandboxFilesystemNotFoundError,
    "is_a_directory": exception.SandboxFilesystemIsADirectoryError,
    "not_a_directory": exception.SandboxFilesystemNotADirectoryError,
    "permission_denied": exception.SandboxFilesystemPermissionError,
    "file_exists": exception.SandboxFilesystemPathAlreadyExistsError,
    "directory_not_empty": exception.SandboxFilesystemDirectoryNotEmptyError,
    "file_busy": exception.SandboxFilesystemBusyError,
    "file_error": exception.SandboxFilesystemError,
    "unauthorized": exception.AuthError,
}


def error_for(kind: str, message: str) -> exception.Error:
    """The exception for an engine error body (also used for errors inside streams)."""
    return _ERRORS.get(kind, exception.EngineError)(message)


def _raise_for(response: http11.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json()
        kind, message = body["type"], body["message"]
    except (ValueError, KeyError, TypeError):
        raise exception.EngineError(
            f"engine answered {response.status_code}: {response.text[:500]}"
        ) from None
    raise error_for(kind, message)


def _check_health(status: int, body: dict[str, Any]) -> bool:
    if status == 401:  # a remote engine's gateway refused the credentials
        raise exception.AuthError(str(body.get("message") or "the engine refused the token"))
    if status != 200:
        return False
    version = body.get("api_version")
    if version != API_VERSION:
        raise exception.VersionError(
            f"the running hutch engine speaks API version {version}, this SDK needs "
            f"{API_VERSION}: stop it with `hutch engine stop` and call again"
        )
    return True


def _health_body(answer: http11.Response) -> dict[str, Any]:
    if answer.status not in (200, 401):
        return {}
    try:
        body = answer.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


#: Requests that may be sent again when the engine died before answering them: they
#: change nothing.  Any request may be sent again when nothing of it was sent.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

#: Seconds the engine has to answer a health check before it counts as not running; a
#: remote one more (a TLS handshake, or an ssh channel, over a real network first).
READY_TIMEOUT = 2.0
REMOTE_READY_TIMEOUT = 15.0


def _ready_timeout(where: endpoint.Endpoint) -> float:
    return READY_TIMEOUT if where.local else REMOTE_READY_TIMEOUT


def make_pool(where: endpoint.Endpoint, blocking: bool = False,
              timeout: float | None = None) -> http11.Pool:
    """A connection pool to ``where``: its Unix socket, or TLS to its host and port."""
    tcp = (where.host, where.port) if where.host is not None and where.port is not None \
        else None
    if blocking:
        return http11.BlockingPool(where.unix or "", timeout, tcp=tcp, tls=where.tls,
                                   headers=where.header_lines())
    return http11.Pool(where.unix or "", tcp=tcp, tls=where.tls, headers=where.header_lines())


def _ready_blocking(where: endpoint.Endpoint | None = None) -> bool:
    """Whether the engine answers (a blocking probe, for the launcher's thread and direct
    calls).  A remote engine's failure is raised with its reason (a refused certificate,
    a wrong token), not taken for an engine to start."""
    where = where or endpoint.current()
    pool = make_pool(where, blocking=True, timeout=_ready_timeout(where))
    try:
        answer = syncbridge.run_direct(pool.request, "GET", urls.HEALTH)
    except (OSError, http11.ProtocolError) as exc:
        if where.local:
            return False
        raise exception.ConnectionError(f"no hutch engine answers at {where.url}: "
                                        f"{exc}{where.diagnosis(exc)}") from exc
    finally:
        syncbridge.run_direct(pool.aclose)
    return _check_health(answer.status, _health_body(answer))


def _json(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


class EngineClient:
    """A connection pool to the engine for one event loop; the engine starts on first use
    (the local one: a remote engine, :mod:`.endpoint`, is never started from here)."""

    def __init__(self, autostart: bool = True) -> None:
        self.endpoint = endpoint.current()
        self.socket = self.endpoint.url
        self.autostart = autostart and self.endpoint.local
        self._pool = self._make_pool()
        self._checked = False

    def _make_pool(self) -> http11.Pool:
        return make_pool(self.endpoint)

    async def aclose(self) -> None:
        await self._pool.aclose()

    async def _ready(self) -> bool:
        with anyio.move_on_after(_ready_timeout(self.endpoint)):
            try:
                answer = await self._pool.request("GET", urls.HEALTH)
            except (OSError, http11.ProtocolError) as exc:
                if self.endpoint.local:
                    return False
                raise exception.ConnectionError(
                    f"no hutch engine answers at {self.socket}: {exc}"
                    f"{self.endpoint.diagnosis(exc)}") from exc
            return _check_health(answer.status, _health_body(answer))
        return False

    async def _prepare(self) -> None:
        if self.endpoint.ssh:
            await anyio.to_thread.run_sync(self.endpoint.prepare)

    async def ensure(self) -> None:
        """Make sure an engine of our API version answers, starting one if allowed."""
        if self._checked:
            return
        await self._prepare()
        if not await self._ready():
            if not self.autostart:
                raise exception.ConnectionError(f"no hutch engine answers on {self.socket}")
            await self._launch()
        self._checked = True

    async def _launch(self) -> None:
        await anyio.to_thread.run_sync(launcher.ensure_engine, _ready_blocking)

    def _lost(self, exc: Exception, method: str = "GET", path: str = ""
              ) -> exception.ConnectionError:
        self._checked = False
        if isinstance(exc, http11.NoAnswer) and method not in SAFE_METHODS:
            return exception.EngineRestartedError(
                f"the hutch engine stopped before it answered {method} {path}: it may or "
                f"may not have done it (check before repeating it; the next call reaches a "
                f"restarted engine): {exc}")
        return exception.ConnectionError(f"lost the connection to the hutch engine: {exc}")

    def _may_repeat(self, exc: BaseException, method: str) -> bool:
        """Whether a request that failed with ``exc`` is sent again once an engine runs:
        when nothing of it was sent, or when it is safe to repeat and no answer began."""
        if not (self.autostart or self.endpoint.ssh):  # (an ssh forward is started again)
            return False
        if isinstance(exc, http11.NotSent):
            return True
        return isinstance(exc, http11.NoAnswer) and method in SAFE_METHODS

    async def _restart(self) -> None:
        """The engine went away under a request: start (or wait for) a new one."""
        self._checked = False
        await self.ensure()

    async def request(self, method: str, path: str, *, json_body: Any = None,
                      params: dict[str, Any] | None = None,
                      content: bytes | AsyncIterator[bytes] | None = None) -> Any:
        await self.ensure()
        body: http11.Body | None = content
        content_type = None
        if json_body is not None:
            body, content_type = _json(json_body), "application/json"
        for attempt in (1, 2):
            try:
                answer = await self._pool.request(method, path, params=params, body=body,
                                                  content_type=content_type)
                break
            except (OSError, http11.ProtocolError) as exc:
                if attempt == 1 and self._may_repeat(exc, method):
                    await self._restart()
                    continue
                raise self._lost(exc, method, path) from exc
        _raise_for(answer)
        return answer.json()

    async def stream_bytes(self, path: str, params: dict[str, Any] | None = None
                           ) -> AsyncIterator[bytes]:
        """The raw body of a GET, chunk by chunk (file contents)."""
        await self.ensure()
        for attempt in (1, 2):
            began = False
            try:
                async with self._pool.stream("GET", path, params=params) as (answer, chunks):
                    began = True
                    if not answer.is_success:
                        answer.body = b"".join([chunk async for chunk in chunks])
                        _raise_for(answer)
                    async for chunk in chunks:
                        yield chunk
                return
            except exception.Error:
                raise  # the engine's answer (some are OSErrors, e.g. a missing file)
            except (OSError, http11.ProtocolError) as exc:
                if attempt == 1 and not began and self._may_repeat(exc, "GET"):
                    await self._restart()
                    continue
                raise self._lost(exc) from exc

    async def stream_events(self, path: str, params: dict[str, Any] | None = None,
                            method: str = "GET", json_body: Any = None,
                            ) -> AsyncIterator[dict[str, Any]]:
        """Yield the NDJSON events of a stream, decoding ``data`` to bytes.

        An event with an ``error`` object (an engine failure after the stream began) is
        raised as the matching exception.
        """
        await self.ensure()
        body = None if json_body is None else _json(json_body)
        for attempt in (1, 2):
            began = False
            try:
                async with self._pool.stream(method, path, params=params, body=body,
                                             content_type="application/json" if body else None
                                             ) as (answer, chunks):
                    began = True
                    if not answer.is_success:
                        answer.body = b"".join([chunk async for chunk in chunks])
                        _raise_for(answer)
                    pending = b""
                    async for chunk in chunks:
                        pending += chunk
                        *lines, pending = pending.split(b"\n")
                        for line in lines:
                            if line.strip():
                                yield _event(line)
                    if pending.strip():
                        yield _event(pending)
                return
            except exception.Error:
                raise  # the engine's answer (some are OSErrors, e.g. a missing file)
            except (OSError, http11.ProtocolError) as exc:
                if attempt == 1 and not began and self._may_repeat(exc, method):
                    await self._restart()
                    continue
                raise self._lost(exc, method, path) from exc


class DirectClient(EngineClient):
    """The engine client of one thread's direct calls: blocking sockets, no event loop."""

    def _make_pool(self) -> http11.Pool:
        return make_pool(self.endpoint, blocking=True)

    async def _ready(self) -> bool:
        return _ready_blocking(self.endpoint)  # this thread may block: it is a call

    async def _prepare(self) -> None:
        self.endpoint.prepare()

    async def _launch(self) -> None:
        launcher.ensure_engine(_ready_blocking)


def _event(line: bytes) -> dict[str, Any]:
    """One NDJSON event, its ``data`` decoded; an ``error`` event raised as its exception."""
    event: dict[str, Any] = json.loads(line)
    if event.get("data") is not None:
        event["data"] = base64.b64decode(event["data"])
    if isinstance(event.get("error"), dict):
        err = event["error"]
        raise error_for(str(err.get("type")), str(err.get("message")))
    return event


_asyncio_clients: weakref.WeakKeyDictionary[object, EngineClient] = weakref.WeakKeyDictionary()
_clients_lock = threading.Lock()
_trio_client_var: Any = None


_direct_clients = threading.local()


def client() -> EngineClient:
    """The engine client of the event loop this is called from (or of this thread, in a
    direct call)."""
    if syncbridge.direct():
        found_here: EngineClient | None = getattr(_direct_clients, "client", None)
        if found_here is None:
            found_here = _direct_clients.client = DirectClient()
        return found_here
    if sniffio.current_async_library() == "trio":
        import trio

        global _trio_client_var
        if _trio_client_var is None:
            _trio_client_var = trio.lowlevel.RunVar("hutch_engine_client")
        try:
            found: EngineClient = _trio_client_var.get()
        except LookupError:
            found = EngineClient()
            _trio_client_var.set(found)
        return found
    import asyncio

    loop = asyncio.get_running_loop()
    existing = _asyncio_clients.get(loop)
    if existing is None:
        with _clients_lock:
            for old in [old for old in _asyncio_clients if getattr(old, "is_closed", bool)()]:
                del _asyncio_clients[old]  # their sockets close as they are collected
            existing = _asyncio_clients.setdefault(loop, EngineClient())
    return existing


def request_blocking(method: str, path: str, *, autostart: bool = True, **kw: Any) -> Any:
    """One request from blocking code (the CLI), as a direct call; ``autostart=False``
    never starts an engine."""

    async def call() -> Any:
        if autostart:
            return await client().request(method, path, **kw)
        own = DirectClient(autostart=False)
        try:
            return await own.request(method, path, **kw)
        finally:
            await own.aclose()

    return syncbridge.run_direct(call)


def events_blocking(path: str, params: dict[str, Any] | None = None
                    ) -> Iterator[dict[str, Any]]:
    """The NDJSON events of a stream, from blocking code (direct calls)."""

    async def events() -> AsyncIterator[dict[str, Any]]:
        async for event in client().stream_events(path, params):
            yield event

    return syncbridge.iterate_sync(events, direct=True)


def forget_clients() -> None:
    """Drop every cached connection pool, e.g. after the engine's directories changed."""
    global _trio_client_var, _direct_clients
    _asyncio_clients.clear()
    _trio_client_var = None
    _direct_clients = threading.local()  # every thread's: their sockets close as collected


def _after_fork_in_child() -> None:
    global _clients_lock
    _clients_lock = threading.Lock()
    forget_clients()


os.register_at_fork(after_in_child=_after_fork_in_child)
