"""One async implementation, two faces: every SDK call is blocking and also ``.aio``.

The SDK's logic is written once, as coroutines that run under trio or asyncio (anyio
underneath).  :func:`synchronize` turns such a coroutine method into a descriptor whose
plain call blocks until the result is ready and whose ``.aio`` attribute is the coroutine
itself, the way Modal's ``synchronicity`` does::

    sb.exec("true")            # blocking
    await sb.exec.aio("true")  # from the caller's own trio or asyncio loop

Blocking calls run on the *portal*: one asyncio event loop in a daemon thread, started on
first use and shared by every thread of the process.  So the blocking API works in a plain
script, from many threads at once, and beside (not inside) an event loop the program runs
in another thread; the loop thread itself gets a clear error instead of a deadlock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

import anyio
import anyio.from_thread

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")
T = TypeVar("T")

_lock = threading.Lock()
_portal: anyio.from_thread.BlockingPortal | None = None
_portal_thread: threading.Thread | None = None
_background: set[asyncio.Task[Any]] = set()


def _start_portal() -> anyio.from_thread.BlockingPortal:
    """Run an asyncio loop with a blocking portal in a daemon thread (dies with the process)."""
    ready: list[anyio.from_thread.BlockingPortal] = []
    started = threading.Event()
    failure: list[BaseException] = []

    async def serve() -> None:
        async with anyio.from_thread.BlockingPortal() as portal:
            ready.append(portal)
            started.set()
            await portal.sleep_until_stopped()

    def main() -> None:
        try:
            anyio.run(serve)
        except BaseException as exc:  # reported to the thread that asked for the portal
            failure.append(exc)
            started.set()

    global _portal_thread
    _portal_thread = threading.Thread(target=main, name="hutch-portal", daemon=True)
    _portal_thread.start()
    started.wait()
    if failure:
        raise RuntimeError("hutch could not start its event-loop thread") from failure[0]
    return ready[0]


def _forget_portal_in_child() -> None:
    """A forked child has no portal thread (threads do not survive fork): start afresh."""
    global _lock, _portal, _portal_thread
    _lock = threading.Lock()
    _portal = None
    _portal_thread = None
    _background.clear()


os.register_at_fork(after_in_child=_forget_portal_in_child)


def portal() -> anyio.from_thread.BlockingPortal:
    """The process's portal, started on first use."""
    global _portal
    if _portal is None:
        with _lock:
            if _portal is None:
                _portal = _start_portal()
    return _portal


def in_portal_thread() -> bool:
    return threading.current_thread() is _portal_thread


def run_sync(fn: Callable[P, Awaitable[R]], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run the coroutine function ``fn`` on the portal and block until it returns."""
    if in_portal_thread():
        raise RuntimeError("a blocking hutch call was made from hutch's own event-loop thread")
    call = functools.partial(fn, *args, **kwargs)
    return portal().call(call)


def start_background(fn: Callable[[], Coroutine[Any, Any, None]]
                     ) -> concurrent.futures.Future[None]:
    """Run ``fn()`` as a task on the portal's loop, from any thread including the portal's."""
    if not in_portal_thread():
        return portal().start_task_soon(fn)
    future: concurrent.futures.Future[None] = concurrent.futures.Future()
    task = asyncio.get_running_loop().create_task(fn())
    _background.add(task)

    def finished(t: asyncio.Task[None]) -> None:
        _background.discard(t)
        if t.cancelled():
            future.cancel()
        elif (exc := t.exception()) is not None:
            future.set_exception(exc)
        else:
            future.set_result(None)

    task.add_done_callback(finished)
    return future


class BoundCall(Generic[P, R]):
    """A call with a blocking face (``__call__``) and an async face (``aio``)."""


    def __init__(self, fn: Callable[P, Coroutine[Any, Any, R]], name: str | None = None,
                 doc: str | None = None) -> None:
        self._fn = fn
        self.__doc__ = doc or fn.__doc__
        self.__name__ = name or getattr(fn, "__name__", "call")
        self.__wrapped__ = fn

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return run_sync(self._fn, *args, **kwargs)

    def aio(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        return self._fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<hutch call {self.__name__} (blocking; .aio is async)>"


class synchronize(Generic[S, P, R]):
    """Decorate an ``async def`` method: calling it blocks; ``.aio`` is the coroutine."""

    def __init__(self, fn: Callable[Concatenate[S, P], Coroutine[Any, Any, R]]) -> None:
        self._fn = fn
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__
        self.__wrapped__ = fn

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> synchronize[S, P, R]: ...
    @overload
    def __get__(self, obj: S, owner: type[Any]) -> BoundCall[P, R]: ...

    def __get__(self, obj: S | None, owner: type[Any]) -> BoundCall[P, R] | synchronize[S, P, R]:
        if obj is None:
            return self
        return BoundCall(functools.partial(self._fn, obj), self.__name__, self.__doc__)


class synchronize_static(Generic[P, R]):
    """Like :class:`synchronize` for a static constructor (``Sandbox.create``)."""

    def __init__(self, fn: Callable[P, Coroutine[Any, Any, R]]) -> None:
        self._bound = BoundCall(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __get__(self, obj: object, owner: type[Any]) -> BoundCall[P, R]:
        return self._bound


def iterate_sync(make: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
    """Drive an async iterator (created on the portal) from a blocking ``for`` loop."""
    it: AsyncIterator[T] = run_sync(_make_async, make)
    try:
        while True:
            done, item = run_sync(_anext, it)
            if done:
                return
            yield item  # type: ignore[misc]
    finally:
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            run_sync(aclose)


async def _make_async(make: Callable[[], AsyncIterator[T]]) -> AsyncIterator[T]:
    return make()


async def _anext(it: AsyncIterator[T]) -> tuple[bool, T | None]:
    """One step; the end is a value, not an exception, so it crosses threads cleanly."""
    try:
        return False, await it.__anext__()
    except StopAsyncIteration:
        return True, None
