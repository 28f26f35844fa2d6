"""One async implementation, two faces: every SDK call is blocking and also ``.aio``.

The SDK's logic is written once, as coroutines under trio or asyncio (anyio underneath);
:func:`synchronize` makes each a descriptor whose plain call blocks and whose ``.aio`` is
the coroutine, as Modal's ``synchronicity`` does.  Blocking calls run on the *portal*, one
asyncio loop in a daemon thread shared by every thread.  Why the hottest calls are *direct*
(:func:`synchronize_direct`: run on the calling thread, over a blocking socket, with
:func:`direct` true): the portal's two thread hops were a fifth of an ``exec``.  A direct
coroutine that tries to suspend is a bug, and stops with a ``RuntimeError``.
Details: docs/design.md, "The SDK: one async core, two faces".
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

import sniffio

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")
T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_portal_thread: threading.Thread | None = None


def _start_portal() -> asyncio.AbstractEventLoop:
    """Run an asyncio loop in a daemon thread (it dies with the process).

    Calls reach it with ``run_coroutine_threadsafe``: about 60 µs a hop here, where anyio's
    ``BlockingPortal`` took 160 µs, and anyio code runs in its tasks all the same.
    """
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def main() -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        loop.run_forever()

    global _portal_thread
    _portal_thread = threading.Thread(target=main, name="hutch-portal", daemon=True)
    _portal_thread.start()
    started.wait()
    return loop


def _forget_portal_in_child() -> None:
    """A forked child has no portal thread (threads do not survive fork): start afresh."""
    global _lock, _loop, _portal_thread
    _lock = threading.Lock()
    _loop = None
    _portal_thread = None


os.register_at_fork(after_in_child=_forget_portal_in_child)


def portal() -> asyncio.AbstractEventLoop:
    """The portal's event loop, started on first use."""
    global _loop
    if _loop is None:
        with _lock:
            if _loop is None:
                _loop = _start_portal()
    return _loop


def in_portal_thread() -> bool:
    return threading.current_thread() is _portal_thread


_direct: contextvars.ContextVar[bool] = contextvars.ContextVar("hutch_direct", default=False)


def direct() -> bool:
    """Whether the code running is a direct call (see the module docstring)."""
    return _direct.get()


def run_direct(fn: Callable[P, Coroutine[Any, Any, R]], *args: P.args,
               **kwargs: P.kwargs) -> R:
    """Run the coroutine function ``fn`` to its end on this thread, as a direct call."""
    if in_portal_thread():
        raise RuntimeError("a blocking hutch call was made from hutch's own event-loop thread")
    token = _direct.set(True)
    try:
        coro = fn(*args, **kwargs)
        try:
            coro.send(None)
        except StopIteration as stop:
            result: R = stop.value
            return result
        coro.close()
    finally:
        _direct.reset(token)
    raise RuntimeError(f"{getattr(fn, '__name__', fn)!s} waited on something other than "
                       "the engine in a direct call")


def run_sync(fn: Callable[P, Awaitable[R]], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run the coroutine function ``fn`` on the portal and block until it returns.

    An interruption of the waiting thread (Ctrl-C) cancels the call on the portal.
    """
    if in_portal_thread():
        raise RuntimeError("a blocking hutch call was made from hutch's own event-loop thread")
    future = asyncio.run_coroutine_threadsafe(_await(fn(*args, **kwargs)), portal())
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


async def _await(awaitable: Awaitable[R]) -> R:
    """Await on the portal.  The task runs in a copy of the *caller's* context variables:
    sniffio's must not say "trio" there when the caller was a trio task, nor ours that it is
    a direct call when a direct call started it (``start_background`` from ``exec``)."""
    sniffio.current_async_library_cvar.set(None)
    _direct.set(False)
    return await awaitable


def start_background(fn: Callable[[], Coroutine[Any, Any, None]]
                     ) -> concurrent.futures.Future[None]:
    """Run ``fn()`` as a task on the portal's loop, from any thread including the portal's."""
    return asyncio.run_coroutine_threadsafe(_await(fn()), portal())


class BoundCall(Generic[P, R]):
    """A call with a blocking face (``__call__``) and an async face (``aio``)."""

    def __init__(self, fn: Callable[P, Coroutine[Any, Any, R]], name: str | None = None,
                 doc: str | None = None, shortcut: Callable[[], R | None] | None = None,
                 direct: bool | Callable[..., bool] = False) -> None:
        self._fn = fn
        self._shortcut = shortcut
        #: whether a blocking call with these arguments is a direct one
        self._direct: Callable[..., bool] | None = \
            (lambda *args, **kwargs: True) if direct is True else direct or None
        self.__doc__ = doc or fn.__doc__
        self.__name__ = name or getattr(fn, "__name__", "call")
        self.__wrapped__ = fn

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if self._shortcut is not None and (known := self._shortcut()) is not None:
            return known  # already known here: no hop to the portal (~0.6 ms when idle)
        if self._direct is not None and self._direct(*args, **kwargs):
            return run_direct(self._fn, *args, **kwargs)
        return run_sync(self._fn, *args, **kwargs)

    def aio(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        return self._fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<hutch call {self.__name__} (blocking; .aio is async)>"


class synchronize(Generic[S, P, R]):
    """Decorate an ``async def`` method: calling it blocks; ``.aio`` is the coroutine.
    (:func:`synchronize_direct` for one whose blocking face is a direct call.)"""

    def __init__(self, fn: Callable[Concatenate[S, P], Coroutine[Any, Any, R]], *,
                 direct: bool = False) -> None:
        self._fn = fn
        self._direct = direct
        self._shortcut: Callable[[S], R | None] | None = None
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__
        self.__wrapped__ = fn

    def shortcut(self, check: Callable[[S], R | None]) -> Callable[[S], R | None]:
        """Decorate a plain method that returns the call's result when it is already known
        (else None): the blocking face then returns it without a hop to the portal."""
        self._shortcut = check
        return check

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> synchronize[S, P, R]: ...
    @overload
    def __get__(self, obj: S, owner: type[Any]) -> BoundCall[P, R]: ...

    def __get__(self, obj: S | None, owner: type[Any]) -> BoundCall[P, R] | synchronize[S, P, R]:
        if obj is None:
            return self
        shortcut = None if self._shortcut is None else functools.partial(self._shortcut, obj)
        return BoundCall(functools.partial(self._fn, obj), self.__name__, self.__doc__,
                         shortcut, self._direct)


class synchronize_static(Generic[P, R]):
    """Like :class:`synchronize` for a static constructor (``Sandbox.create``).
    ``direct``: True, or a function of the call's arguments that says whether this call
    is a direct one (:func:`static_direct`)."""

    def __init__(self, fn: Callable[P, Coroutine[Any, Any, R]], *,
                 direct: bool | Callable[..., bool] = False) -> None:
        self._bound = BoundCall(fn, direct=direct)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __get__(self, obj: object, owner: type[Any]) -> BoundCall[P, R]:
        return self._bound


def synchronize_direct(fn: Callable[Concatenate[S, P], Coroutine[Any, Any, R]]
                       ) -> synchronize[S, P, R]:
    """:class:`synchronize` for a method that only awaits the engine's answers: its
    blocking face is a direct call."""
    return synchronize(fn, direct=True)


def static_direct(when: bool | Callable[..., bool] = True
                  ) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], synchronize_static[P, R]]:
    """:class:`synchronize_static` whose blocking face is a direct call (``when`` it says so,
    given the call's arguments)."""
    def decorate(fn: Callable[P, Coroutine[Any, Any, R]]) -> synchronize_static[P, R]:
        return synchronize_static(fn, direct=when)
    return decorate


def iterate_sync(make: Callable[[], AsyncIterator[T]], direct: bool = False
                 ) -> Iterator[T]:
    """Drive an async iterator from a blocking ``for`` loop, one portal hop per item (or,
    ``direct``, each step a direct call).

    The iterator is made here (making an async generator runs none of its code); it is
    closed the same way when the loop stops early.
    """
    step = run_direct if direct else run_sync
    it = make()
    finished = False
    try:
        while True:
            done, item = step(_anext, it)
            if done:
                finished = True
                return
            yield item  # type: ignore[misc]
    finally:
        aclose = getattr(it, "aclose", None)
        if not finished and aclose is not None:
            step(aclose)


async def _anext(it: AsyncIterator[T]) -> tuple[bool, T | None]:
    """One step; the end is a value, not an exception, so it crosses threads cleanly."""
    try:
        return False, await it.__anext__()
    except StopAsyncIteration:
        return True, None


class BoundGenerator(Generic[P, T]):
    """An async generator call with a blocking face (a ``for`` iterator) and ``aio``."""

    def __init__(self, fn: Callable[P, AsyncIterator[T]], name: str, doc: str | None) -> None:
        self._fn = fn
        self.__name__ = name
        self.__doc__ = doc

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        return iterate_sync(lambda: self._fn(*args, **kwargs))

    def aio(self, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[T]:
        return self._fn(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        """The generator's parameters (``inspect.signature`` shows them, as Modal's)."""
        return inspect.signature(self._fn)


class synchronize_generator(Generic[S, P, T]):
    """Decorate an async generator method: calling it gives a blocking iterator, ``.aio``
    the async one (``for e in sb.filesystem.watch(...)`` / ``async for ... .aio(...)``)."""

    def __init__(self, fn: Callable[Concatenate[S, P], AsyncIterator[T]]) -> None:
        self._fn = fn
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__

    def __get__(self, obj: S, owner: type[Any]) -> BoundGenerator[P, T]:
        return BoundGenerator(functools.partial(self._fn, obj), self.__name__, self.__doc__)
