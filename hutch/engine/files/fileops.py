"""Worker threads for file operations: limited per sandbox (or volume), each with a deadline.

Why: a file call reaches into a tree that code in a sandbox controls, so its worker thread
must neither wait on that code nor share a pool with anyone else (in trio's shared pool, 41
copies onto FIFOs in one volume once blocked its 40 threads for good: no sandbox could be
created, and ``hutch engine stop`` hung).  So each owner has its own
:class:`trio.CapacityLimiter` of :data:`OWNER_FILE_THREADS`, and each call a deadline
(:data:`FILE_OP_TIMEOUT`, waiting included) that long walks check (:func:`check_deadline`);
a call past it answers ``timeout`` and its thread keeps only its owner's slot.  The opens
themselves cannot block (:mod:`hutch.engine.files.sandboxfs`): this is the last resort.
Details: docs/security.md, "The engine's own processes"; docs/limits.md, "file calls
against a hostile sandbox".
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Protocol, Self, TypeVar

import trio

from hutch.engine.errors import TimedOut

T = TypeVar("T")

#: Thread-run file operations one sandbox (or one volume) may have at once; more wait.
OWNER_FILE_THREADS = 4
#: Seconds a file operation may take, waiting for a thread included.
FILE_OP_TIMEOUT = 30.0
#: Extra seconds given to an operation that checks its deadline itself, so that its own
#: error (which says how far it got) usually wins over the abandoning one.
_GRACE = 1.0


def deadline_after(seconds: float = FILE_OP_TIMEOUT) -> float:
    """A deadline on the ``time.monotonic`` clock, for :func:`check_deadline`."""
    return time.monotonic() + seconds


def check_deadline(deadline: float, doing: str) -> None:
    """Raise the ``timeout`` error once ``deadline`` has passed (call it every few hundred
    entries of a long operation: a check costs a clock read)."""
    if time.monotonic() > deadline:
        raise TimedOut(f"{doing} did not finish within its {FILE_OP_TIMEOUT:g} s deadline")


class Resource(Protocol):
    """What :meth:`FileOps.run_fs` duplicates for a step (a ``SandboxFS``)."""

    def dup(self) -> Self: ...

    def close(self) -> None: ...


class _GaveUp(Exception):
    """A step whose caller had given up before its thread began it."""


class _Claim:
    """Who runs a step's clean-up: its thread, once it begins the step, or the caller,
    if the step never began; whichever takes the claim first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken = False

    def take(self) -> bool:
        with self._lock:
            taken, self._taken = self._taken, True
            return not taken


class FileOps:
    """The engine's thread-run file operations, one limiter per owner."""

    def __init__(self, per_owner: int = OWNER_FILE_THREADS,
                 timeout: float = FILE_OP_TIMEOUT) -> None:
        self.per_owner = per_owner
        self.timeout = timeout
        self._limiters: dict[str, trio.CapacityLimiter] = {}

    def limiter(self, owner: str) -> trio.CapacityLimiter:
        limiter = self._limiters.get(owner)
        if limiter is None:
            limiter = self._limiters[owner] = trio.CapacityLimiter(self.per_owner)
        return limiter

    def busy(self, owner: str) -> int:
        """Threads the owner's operations hold now (abandoned ones included)."""
        limiter = self._limiters.get(owner)
        return 0 if limiter is None else int(limiter.borrowed_tokens)

    async def run(self, owner: str, fn: Callable[..., T], *args: object,
                  doing: str = "a file operation", abandon: bool = True) -> T:
        """``fn(*args)`` in a worker thread of ``owner``'s, within the deadline.

        ``fn`` must use no descriptor the caller may close when the call ends (use
        :meth:`run_fd` or :meth:`run_fs`), or be given ``abandon=False``: a step abandoned
        at its deadline goes on running, and a descriptor number closed under it may
        meanwhile name another sandbox's file."""
        return await self._run(owner, fn, args, doing, abandon, None)

    async def run_fd(self, owner: str, fn: Callable[..., T], fd: int, *args: object,
                     doing: str = "a file operation") -> T:
        """``fn(copy, *args)``, ``copy`` a duplicate of ``fd`` that only the step uses and
        closes: an abandoned step keeps its own descriptor, whatever the caller closes."""
        copy = os.dup(fd)

        def step() -> T:
            try:
                return fn(copy, *args)
            finally:
                os.close(copy)

        return await self._run(owner, step, (), doing, True, lambda: os.close(copy))

    async def run_fs(self, owner: str, fs: Resource, fn: Callable[..., T], *args: object,
                     doing: str = "a file operation") -> T:
        """``fn(copy, *args)`` with a duplicate of ``fs`` (a root descriptor of the step's
        own), as :meth:`run_fd` does for a descriptor."""
        copy = fs.dup()

        def step() -> T:
            try:
                return fn(copy, *args)
            finally:
                copy.close()

        return await self._run(owner, step, (), doing, True, copy.close)

    async def _run(self, owner: str, fn: Callable[..., T], args: tuple[object, ...],
                   doing: str, abandon: bool, unstarted: Callable[[], None] | None) -> T:
        """Run ``fn`` in a thread; ``unstarted`` is called if ``fn`` never runs (the call
        was cancelled, or timed out, before its thread began it)."""
        limiter = self.limiter(owner)
        claim = _Claim()

        def step() -> T:
            if not claim.take():
                raise _GaveUp  # the caller gave up before this began: nobody reads this
            return fn(*args)

        try:
            with trio.move_on_after(self.timeout + _GRACE):
                return await trio.to_thread.run_sync(step, limiter=limiter,
                                                     abandon_on_cancel=abandon)
            raise TimedOut(f"{doing} did not finish within its {self.timeout:g} s deadline "
                           f"({owner} runs at most {self.per_owner} file operations at once)")
        finally:
            if claim.take() and unstarted is not None:
                unstarted()
            self._forget_idle(owner, limiter)

    def _forget_idle(self, owner: str, limiter: trio.CapacityLimiter) -> None:
        """Drop an owner's limiter once nothing holds or waits for it (a limiter an
        abandoned thread still holds stays, so that a new one cannot double the slots)."""
        if (limiter.borrowed_tokens == 0 and limiter.statistics().tasks_waiting == 0
                and self._limiters.get(owner) is limiter):
            del self._limiters[owner]
