"""hutch.sdk.syncbridge: one coroutine, a blocking face on the portal thread and ``.aio``.

No engine: the calls here are plain coroutines, so these tests pin the bridge itself —
where each face runs, that exceptions keep their type, that blocking iteration closes the
async generator, that many threads can block at once, and that the portal thread refuses
to block on itself instead of deadlocking.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import anyio
import pytest
import sniffio

from hutch.sdk import syncbridge
from hutch.sdk.syncbridge import BoundCall, iterate_sync, synchronize, synchronize_static

THREADS = 10


class Boom(Exception):
    """An exception type only these tests raise."""


def where() -> tuple[str, str]:
    """The async library and the thread the caller runs in."""
    return sniffio.current_async_library(), threading.current_thread().name


class Thing:
    def __init__(self, base: int) -> None:
        self.base = base

    @synchronize
    async def add(self, n: int, *, times: int = 1) -> int:
        """Add ``n`` to the base, ``times`` times."""
        await anyio.sleep(0)  # a real checkpoint, on whichever loop runs it
        return self.base + n * times

    @synchronize
    async def context(self) -> tuple[str, str]:
        await anyio.sleep(0)
        return where()

    @synchronize
    async def fail(self, message: str) -> None:
        await anyio.sleep(0)
        raise Boom(message)

    @synchronize
    async def nested(self) -> int:
        """Calls the blocking face of another method from the portal thread."""
        return self.add(1)

    @synchronize_static
    async def make(base: int) -> Thing:
        await anyio.sleep(0)
        return Thing(base)


class Gate:
    """``meet`` returns only once ``n`` calls are inside it at the same time."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.arrived = 0
        self.event: anyio.Event | None = None

    @synchronize
    async def meet(self, i: int) -> int:
        if self.event is None:
            self.event = anyio.Event()
        self.arrived += 1
        if self.arrived == self.n:
            self.event.set()
        with anyio.fail_after(10):
            await self.event.wait()
        return i * 2


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


# the blocking face ---------------------------------------------------------------------------

def test_blocking_face_returns_the_result() -> None:
    thing = Thing(10)
    assert thing.add(2) == 12
    assert thing.add(2, times=3) == 16
    made = Thing.make(5)
    assert isinstance(made, Thing) and made.base == 5


def test_blocking_face_runs_on_the_portal_thread() -> None:
    library, thread = Thing(0).context()
    assert library == "asyncio"
    assert thread == "hutch-portal"
    assert thread != threading.current_thread().name
    assert not syncbridge.in_portal_thread()


def test_descriptors_bind_and_keep_their_names() -> None:
    assert isinstance(Thing.__dict__["add"], synchronize)
    assert Thing.add is Thing.__dict__["add"]  # class access gives the descriptor itself
    bound = Thing(1).add
    assert isinstance(bound, BoundCall)
    assert bound.__name__ == "add"
    assert bound.__doc__ == "Add ``n`` to the base, ``times`` times."
    assert "blocking" in repr(bound)
    assert isinstance(Thing.make, BoundCall)
    assert Thing.make is Thing(0).make  # a static constructor is the same call everywhere


def test_aio_is_a_coroutine_not_a_blocking_call() -> None:
    coro = Thing(1).add.aio(1)
    try:
        assert inspect.iscoroutine(coro)
    finally:
        coro.close()


def test_exception_type_crosses_the_blocking_face() -> None:
    with pytest.raises(Boom, match=r"^blocking$") as info:
        Thing(0).fail("blocking")
    assert type(info.value) is Boom


def test_exception_in_a_static_call_crosses_the_blocking_face() -> None:
    @synchronize_static
    async def broken() -> None:
        raise KeyError("missing")

    class Holder:
        call = broken

    with pytest.raises(KeyError):
        Holder.call()


# the .aio face, under asyncio and trio -------------------------------------------------------

@pytest.mark.anyio
async def test_aio_face_runs_on_the_callers_loop(anyio_backend: str) -> None:
    thing = Thing(10)
    assert await thing.add.aio(2, times=2) == 14
    made = await Thing.make.aio(7)
    assert made.base == 7
    library, thread = await thing.context.aio()
    assert library == anyio_backend
    assert thread == threading.current_thread().name
    assert thread != "hutch-portal"


@pytest.mark.anyio
async def test_exception_type_crosses_the_aio_face(anyio_backend: str) -> None:
    with pytest.raises(Boom, match=r"^async$") as info:
        await Thing(0).fail.aio("async")
    assert type(info.value) is Boom


@pytest.mark.anyio
async def test_blocking_face_from_a_worker_thread_of_a_loop(anyio_backend: str) -> None:
    """A loop's worker thread may block on the portal while the loop keeps running."""
    assert await anyio.to_thread.run_sync(Thing(1).add, 1) == 2
    with pytest.raises(Boom):
        await anyio.to_thread.run_sync(Thing(0).fail, "from a worker")


# iteration -----------------------------------------------------------------------------------

def counting(closed: threading.Event, seen: list[tuple[str, str]], stop: int | None = None,
             fail_at: int | None = None) -> Callable[[], AsyncIterator[int]]:
    async def gen() -> AsyncIterator[int]:
        try:
            i = 0
            while stop is None or i < stop:
                seen.append(where())
                if i == fail_at:
                    raise Boom(f"at {i}")
                await anyio.sleep(0)
                yield i
                i += 1
        finally:
            closed.set()

    return gen


def test_iterate_sync_yields_everything_and_finishes() -> None:
    closed = threading.Event()
    seen: list[tuple[str, str]] = []
    assert list(iterate_sync(counting(closed, seen, stop=5))) == [0, 1, 2, 3, 4]
    assert closed.is_set()
    assert set(seen) == {("asyncio", "hutch-portal")}  # the generator runs on the portal


def test_iterate_sync_closes_the_generator_when_the_loop_breaks() -> None:
    closed = threading.Event()
    got: list[int] = []
    for i in iterate_sync(counting(closed, [])):  # endless unless closed
        got.append(i)
        if i == 3:
            break
    assert got == [0, 1, 2, 3]
    assert closed.is_set(), "the async generator's finally did not run after break"


def test_iterate_sync_close_runs_finally() -> None:
    closed = threading.Event()
    it = cast(Generator[int, None, None], iterate_sync(counting(closed, [])))
    assert next(it) == 0
    assert not closed.is_set()
    it.close()
    assert closed.is_set()


def test_iterate_sync_propagates_the_generators_exception() -> None:
    closed = threading.Event()
    got: list[int] = []
    with pytest.raises(Boom, match="at 2"):
        for i in iterate_sync(counting(closed, [], fail_at=2)):
            got.append(i)
    assert got == [0, 1]
    assert closed.is_set()


# threads and loops ---------------------------------------------------------------------------

def test_blocking_calls_from_many_threads_run_concurrently() -> None:
    """All ten calls must be inside the coroutine at once for any of them to return."""
    gate = Gate(THREADS)
    start = threading.Barrier(THREADS)

    def call(i: int) -> int:
        start.wait(timeout=10)
        return gate.meet(i)

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(call, range(THREADS), timeout=30))
    assert results == [i * 2 for i in range(THREADS)]
    assert gate.arrived == THREADS


def test_blocking_calls_from_many_threads_keep_their_own_results() -> None:
    things = [Thing(i * 100) for i in range(THREADS)]

    def call(i: int) -> list[int]:
        return [things[i].add(n) for n in range(20)]

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(call, range(THREADS), timeout=30))
    assert results == [[i * 100 + n for n in range(20)] for i in range(THREADS)]


def test_blocking_call_inside_a_running_asyncio_loop() -> None:
    """The calling loop is blocked for the call, but it does not deadlock: the portal
    is another thread."""

    async def main() -> tuple[int, tuple[str, str], int]:
        blocking = Thing(1).add(1)
        context = Thing(0).context()
        via_aio = await Thing(2).add.aio(2)
        return blocking, context, via_aio

    assert asyncio.run(main()) == (2, ("asyncio", "hutch-portal"), 4)


def test_blocking_call_inside_a_running_trio_loop() -> None:
    import trio

    async def main() -> tuple[int, str]:
        return Thing(1).add(1), (await Thing(0).context.aio())[0]

    assert trio.run(main) == (2, "trio")


# the portal thread itself --------------------------------------------------------------------

def test_blocking_face_on_the_portal_thread_raises() -> None:
    with pytest.raises(RuntimeError, match="event-loop thread"):
        Thing(0).nested()
    assert Thing(3).add(1) == 4  # the portal is still serving


def test_start_background_from_both_sides() -> None:
    """A task started from a thread and one started from the portal both complete."""
    ran: list[str] = []

    async def record() -> None:
        ran.append(where()[1])

    syncbridge.start_background(record).result(timeout=10)

    class Starter:
        @synchronize
        async def start(self) -> None:
            fut = syncbridge.start_background(record)
            with anyio.fail_after(10):
                while not fut.done():
                    await anyio.sleep(0.01)
            fut.result()

    Starter().start()
    assert ran == ["hutch-portal", "hutch-portal"]


def test_portal_calls_from_a_trio_task_run_as_asyncio() -> None:
    """The portal task inherits the caller's context variables, but not trio's sniffio mark."""
    import sniffio
    import trio

    async def library() -> str:
        return sniffio.current_async_library()

    async def from_trio() -> str:
        return syncbridge.run_sync(library)

    assert trio.run(from_trio) == "asyncio"


# direct calls ----------------------------------------------------------------------------------

class Engineish:
    """Methods whose only awaits never suspend in a direct call (as the engine's answers
    over a blocking socket do), and one that does suspend."""

    def __init__(self) -> None:
        self.steps: list[str] = []

    async def _answer(self, value: int) -> int:
        self.steps.append(threading.current_thread().name)
        return value

    @syncbridge.synchronize_direct
    async def ask(self, value: int) -> tuple[int, bool, str]:
        got = await self._answer(value)
        return got, syncbridge.direct(), threading.current_thread().name

    @syncbridge.synchronize_direct
    async def suspends(self) -> None:
        self.steps.append("before")
        await asyncio.sleep(0)  # yields to an event loop, which a direct call has none of
        self.steps.append("after")

    @syncbridge.static_direct(when=lambda value: value > 0)
    async def maybe(value: int) -> tuple[bool, str]:
        await anyio.sleep(0) if value <= 0 else None
        return syncbridge.direct(), threading.current_thread().name


def test_a_direct_call_runs_on_the_calling_thread() -> None:
    thing = Engineish()
    here = threading.current_thread().name
    assert thing.ask(5) == (5, True, here)
    assert thing.steps == [here]
    assert syncbridge.direct() is False  # only inside the call


def test_a_direct_call_that_suspends_is_stopped_with_a_clear_error() -> None:
    thing = Engineish()
    with pytest.raises(RuntimeError, match="other than the engine"):
        thing.suspends()
    assert thing.steps == ["before"]  # stopped there, not run on elsewhere
    assert syncbridge.direct() is False


def test_direct_calls_keep_their_aio_face() -> None:
    async def main() -> tuple[int, bool, str]:
        return await Engineish().ask.aio(7)

    value, direct, _ = asyncio.run(main())
    assert (value, direct) == (7, False)


def test_a_static_call_is_direct_when_its_arguments_say_so() -> None:
    here = threading.current_thread().name
    assert Engineish.maybe(1) == (True, here)
    assert Engineish.maybe(0) == (False, "hutch-portal")


def test_direct_iteration_runs_each_step_on_the_calling_thread() -> None:
    seen: list[tuple[bool, str]] = []
    closed: list[bool] = []

    async def gen() -> AsyncIterator[int]:
        try:
            for i in range(3):
                seen.append((syncbridge.direct(), threading.current_thread().name))
                yield i
        finally:
            closed.append(syncbridge.direct())

    assert list(iterate_sync(gen, direct=True)) == [0, 1, 2]
    here = threading.current_thread().name
    assert seen == [(True, here)] * 3 and closed == [True]
    for _ in iterate_sync(gen, direct=True):
        break  # closed early: its finally runs, directly too
    assert closed == [True, True]


def test_direct_calls_from_the_portal_thread_are_refused() -> None:
    async def on_portal() -> None:
        Engineish().ask(1)

    with pytest.raises(RuntimeError, match="own event-loop thread"):
        syncbridge.run_sync(on_portal)


def test_background_work_a_direct_call_starts_is_not_direct() -> None:
    """``exec(stdout=StreamType.STDOUT)`` starts its printers from a direct call: they run
    on the portal's loop, which must not take them for direct calls (blocking its loop)."""
    seen: list[tuple[bool, str]] = []

    async def background() -> None:
        seen.append((syncbridge.direct(), threading.current_thread().name))

    async def starter() -> None:
        syncbridge.start_background(background).result(timeout=10)

    syncbridge.run_direct(starter)
    assert seen == [(False, "hutch-portal")]
