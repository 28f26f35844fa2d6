"""``sb.logs`` and ``app.logs``: a sandbox entrypoint's output as Modal's timestamped
``LogEntry`` objects, from the engine's record of when each line was written.

``fetch(since=, until=, source=, search_text=)`` reads a time range, ``tail(n)`` the last
entries, and ``app.logs.stream(timeout=)`` follows new ones.  As in Modal: the output of
``exec`` commands is not in them; times are UTC ``datetime``s, and one without a time zone
is local time.  ``source`` is ``"stdout"``, ``"stderr"`` or ``"system"`` (the engine's own
lines: a sandbox's start and end).  A line's time is when the engine saw it, within 50 ms
of its write (:mod:`hutch.engine.lifecycle.logindex`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import anyio

from hutch.api import urls
from hutch.exception import InvalidError, LogsFetchError
from hutch.sdk.syncbridge import synchronize_generator
from hutch.sdk.transport import client

LogSource = Literal["stdout", "stderr", "system"]
#: How often ``stream`` asks the engine for new entries (seconds).
STREAM_POLL = 0.25
#: The most entries ``tail`` gives, as Modal's.
MAX_TAIL = 20_000


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One line of output (or of the engine's, ``source="system"``); ``context_ids`` holds
    the id of the sandbox that wrote it (Modal's: its container's)."""

    message: str
    timestamp: datetime
    source: LogSource
    object_id: str
    context_ids: list[str]

    def __str__(self) -> str:
        return self.message


def _epoch(value: datetime, name: str) -> float:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime")
    return value.astimezone(UTC).timestamp()  # naive: local time, as Modal's


def _source(source: object) -> LogSource | None:
    if source not in (None, "stdout", "stderr", "system"):
        raise ValueError("source must be one of 'stdout', 'stderr', 'system', or None")
    return source  # type: ignore[return-value]


class _Logs:
    """What the two managers share: ``object_id`` is the sandbox's or the app's."""

    def __init__(self, scope: Callable[[], Awaitable[dict[str, str]]], object_id: Callable[
            [], str]) -> None:
        self._scope = scope
        self._object_id = object_id

    async def _page(self, since: float, skip: int, until: float | None = None,
                    source: LogSource | None = None, search_text: str = "",
                    tail: int | None = None) -> tuple[list[dict[str, Any]], bool]:
        """One answer of the engine: entries, and whether more matched."""
        found = await self._answer(since, skip, until, source, search_text, tail)
        return found["entries"], bool(found.get("more"))

    async def _answer(self, since: float, skip: int, until: float | None = None,
                      source: LogSource | None = None, search_text: str = "",
                      tail: int | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {**await self._scope(), "since": since, "skip": skip,
                                  "search": search_text}
        for name, value in (("until", until), ("source", source), ("tail", tail)):
            if value is not None:
                params[name] = value
        found: dict[str, Any] = await client().request("GET", urls.LOGS, params=params)
        return found

    async def _pages(self, since: float, until: float | None, source: LogSource | None,
                     search_text: str) -> AsyncIterator[list[dict[str, Any]]]:
        skip = 0
        while True:
            entries, more = await self._page(since, skip, until, source, search_text)
            yield entries
            if not more or not entries:
                return
            since, skip = _advance(since, skip, entries)

    def _entry(self, found: dict[str, Any]) -> LogEntry:
        return LogEntry(message=found["message"],
                        timestamp=datetime.fromtimestamp(found["time"], UTC),
                        source=found["source"], object_id=self._object_id(),
                        context_ids=[found["sandbox_id"]])

    async def _fetch(self, since: datetime, until: datetime | None, source: object,
                     search_text: str) -> AsyncIterator[LogEntry]:
        start = _epoch(since, "since")
        end = _epoch(until or datetime.now(UTC), "until")  # (as Modal's: now, at the call)
        async for page in self._pages(start, end, _source(source), search_text):
            for found in page:
                yield self._entry(found)

    async def _tail(self, entries: int, source: object) -> AsyncIterator[LogEntry]:
        if isinstance(entries, bool) or not isinstance(entries, int) or entries < 1:
            raise InvalidError(f"entries must be a positive int, got {entries!r}")
        if entries > MAX_TAIL:
            raise LogsFetchError(f"--tail value must not exceed {MAX_TAIL}.")
        found, _ = await self._page(0.0, 0, source=_source(source), tail=entries)
        for one in found:
            yield self._entry(one)


class SandboxLogsManager(_Logs):
    """``sb.logs``: the sandbox entrypoint's output."""

    @synchronize_generator
    async def fetch(self, *, since: datetime, until: datetime | None = None,
                    source: LogSource | None = None, search_text: str = ""
                    ) -> AsyncIterator[LogEntry]:
        """Entries from ``since`` (inclusive) to ``until`` (exclusive, default now), oldest
        first; ``search_text`` keeps those that contain it."""
        async for entry in self._fetch(since, until, source, search_text):
            yield entry

    @synchronize_generator
    async def tail(self, entries: int = 100, *, source: LogSource | None = None
                   ) -> AsyncIterator[LogEntry]:
        """The last ``entries`` entries, oldest first."""
        async for entry in self._tail(entries, source):
            yield entry


class AppLogsManager(SandboxLogsManager):
    """``app.logs``: the output of all the app's sandboxes, merged in time (``fetch`` and
    ``tail`` as a sandbox's), and ``stream``."""

    @synchronize_generator
    async def stream(self, timeout: float | None = None) -> AsyncIterator[LogEntry]:
        """New entries as they come (from now on), until none came for ``timeout`` seconds,
        or the app was stopped and none of its sandboxes runs."""
        if timeout is not None and timeout <= 0:
            return
        since, skip = datetime.now(UTC).timestamp(), 0
        quiet_since = anyio.current_time()
        while timeout is None or anyio.current_time() - quiet_since < timeout:
            answer = await self._answer(since, skip)
            entries = answer["entries"]
            for found in entries:
                quiet_since = anyio.current_time()
                yield self._entry(found)
            if entries:
                since, skip = _advance(since, skip, entries)
            if answer.get("app_done"):  # stopped, and nothing of it runs: as Modal's
                return
            if not answer.get("more"):
                await anyio.sleep(STREAM_POLL)


def _advance(since: float, skip: int, entries: list[dict[str, Any]]) -> tuple[float, int]:
    """The cursor after ``entries``: the last one's time, and how many at that time were
    had (those the engine skipped already, when it is the same time, and these)."""
    last = entries[-1]["time"]
    return last, (skip if last == since else 0) + sum(1 for e in entries if e["time"] == last)
