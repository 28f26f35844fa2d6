"""The app routes besides lookup (an app's record and tags), the timed log entries of a
sandbox or of all an app's sandboxes (``sb.logs``, ``app.logs`` in the SDK), and a
sandbox's connect tokens: what Modal programs ask of its platform."""

from __future__ import annotations

import collections
import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Literal

import trio
from fastapi import FastAPI, Query

from hutch.api import urls
from hutch.api.appmodels import (
    AppInfo,
    ConnectTokenInfo,
    ConnectTokenRequest,
    LogEntries,
    LogEntryInfo,
)
from hutch.api.models import SetTagsRequest
from hutch.engine.errors import Conflict, Invalid
from hutch.engine.lifecycle import logindex
from hutch.engine.lifecycle.manager import SandboxManager
from hutch.engine.routes.common import errors_doc
from hutch.engine.storage.store import SandboxRow

#: Most entries one answer carries (the SDK asks again for more), and their most bytes.
MAX_ENTRIES = 5000
MAX_BYTES = 16 << 20
#: The most entries a tail gives (as Modal's); the newest fitting in MAX_BYTES.
MAX_TAIL = 20_000
ALL_STATES = ("creating", "running", "exited")
Source = Literal["stdout", "stderr", "system"]


def add_app_routes(app: FastAPI, manager: SandboxManager) -> None:
    @app.get(urls.APP, responses=errors_doc(404, 422))
    async def app_info(app_id: str) -> AppInfo:
        return AppInfo(**manager.store.app(app_id))

    @app.post(urls.APP_STOP, responses=errors_doc(404, 422))
    async def stop_app(app_id: str) -> AppInfo:
        """Terminate the app's running sandboxes, its warm pools and what the engine's
        reserve keeps for it, and mark it stopped (Modal's ``App.stop``); a sandbox created
        in it later makes it in use again."""
        manager.store.app_by_id(app_id)
        manager.store.mark_app_stopped(app_id)
        try:
            if manager.pools is not None:
                await manager.pools.stop_app(app_id)
        finally:
            async with trio.open_nursery() as nursery:
                for row in manager.store.list_sandboxes(app_id=app_id):
                    nursery.start_soon(manager.terminate, row.sandbox_id, 0.0)
        return AppInfo(**manager.store.app(app_id))

    @app.put(urls.APP_TAGS, responses=errors_doc(400, 404, 422))
    async def set_app_tags(app_id: str, req: SetTagsRequest) -> AppInfo:
        manager.store.set_app_tags(app_id, req.tags)
        return AppInfo(**manager.store.app(app_id))

    @app.post(urls.SANDBOX_CONNECT_TOKENS, responses=errors_doc(400, 404, 409, 422))
    async def connect_token(sandbox_id: str, req: ConnectTokenRequest) -> ConnectTokenInfo:
        """A token for HTTP requests to a port of the sandbox (Modal's connect tokens)."""
        manager.get(sandbox_id)
        live = manager.live.get(sandbox_id)
        if live is None or live.pidfd is None or live.ended:
            raise Conflict(f"Sandbox {sandbox_id} has already finished")
        url, token = await manager.connects.issue(live, req.port, req.user_metadata)
        return ConnectTokenInfo(url=url, token=token)

    @app.get(urls.LOGS, responses=errors_doc(400, 404, 422))
    async def logs(sandbox_id: str | None = None, app_id: str | None = None,
                   since: float = 0.0, until: float | None = None,
                   source: Source | None = None, search: str = "",
                   tail: Annotated[int | None, Query(ge=1, le=MAX_TAIL)] = None,
                   skip: Annotated[int, Query(ge=0)] = 0) -> LogEntries:
        """Entries with ``since <= time < until``, oldest first; ``tail``: the last ones."""
        if (sandbox_id is None) == (app_id is None):
            raise Invalid("logs: give one of sandbox_id and app_id")
        if sandbox_id is not None:
            rows = [manager.get(sandbox_id)]
        else:
            assert app_id is not None
            manager.store.app_by_id(app_id)
            rows = manager.store.list_sandboxes(app_id=app_id, states=ALL_STATES)
        running = set()
        for row in rows:  # what they wrote until now has its time, for every reader
            live = manager.live.get(row.sandbox_id)
            if live is not None and live.log_index is not None:
                live.log_index.record()
                running.add(row.sandbox_id)
        done = app_id is not None and not running and \
            manager.store.app(app_id)["stopped_at"] is not None
        query = _Query(since, until, source, search.encode(), tail, skip)
        answer = await trio.to_thread.run_sync(_answer, manager, rows, running, query)
        answer.app_done = done and not answer.more
        return answer


@dataclass(frozen=True)
class _Query:
    since: float
    until: float | None
    source: Source | None
    search: bytes
    tail: int | None
    skip: int


def _answer(manager: SandboxManager, rows: list[SandboxRow], running: set[str],
            query: _Query) -> LogEntries:
    """The entries of ``rows`` that ``query`` asks for: the streams of all of them merged
    in time as they are read, so that only the entries answered are ever made."""
    fds = tuple(fd for fd, name in logindex.SOURCES.items() if query.source in (None, name))
    streams: list[Iterator[tuple[str, logindex.Entry]]] = []
    for row in rows:
        for one in logindex.streams(manager.dirs(row.sandbox_id), fds,
                                    live=row.sandbox_id in running, since=query.since,
                                    search=query.search, tail=query.tail):
            streams.append(zip(itertools.repeat(row.sandbox_id), one, strict=False))
        if query.source in (None, "system"):
            streams.append(iter(_system_entries(row)))
    merged = heapq.merge(*streams, key=lambda tagged: tagged[1].time)
    wanted = (pair for pair in merged if pair[1].time >= query.since
              and (query.until is None or pair[1].time < query.until)
              and query.search in pair[1].message)
    if query.tail is not None:  # the newest, as many as asked that fit in MAX_BYTES
        last: collections.deque[tuple[str, logindex.Entry]] = collections.deque()
        held = 0
        for pair in wanted:
            last.append(pair)
            held += len(pair[1].message)
            while len(last) > query.tail or (held > MAX_BYTES and len(last) > 1):
                held -= len(last.popleft()[1].message)
        return LogEntries(entries=[_info(*pair) for pair in last])
    skip = query.skip
    found: list[LogEntryInfo] = []
    size = 0
    for sandbox_id, entry in wanted:
        if skip and entry.time == query.since:
            skip -= 1
            continue
        if len(found) == MAX_ENTRIES or (found and size + len(entry.message) > MAX_BYTES):
            return LogEntries(entries=found, more=True)
        found.append(_info(sandbox_id, entry))
        size += len(entry.message)
    return LogEntries(entries=found)


def _info(sandbox_id: str, entry: logindex.Entry) -> LogEntryInfo:
    return LogEntryInfo(sandbox_id=sandbox_id, time=entry.time,
                        source="system" if entry.fd == 0 else logindex.SOURCES[entry.fd],
                        message=entry.message.decode(errors="replace"))


def _system_entries(row: SandboxRow) -> list[tuple[str, logindex.Entry]]:
    """The engine's own lines about a sandbox: its start and its end."""
    events = [(row.created_at, f"Sandbox {row.sandbox_id} started from {row.image}\n")]
    if row.finished_at is not None:
        detail = f": {row.exit_detail}" if row.exit_detail else ""
        events.append((row.finished_at, f"Sandbox {row.sandbox_id} ended ({row.exit_reason},"
                                        f" exit code {row.returncode}){detail}\n"))
    return [(row.sandbox_id, logindex.Entry(at, 0, text.encode())) for at, text in events]
