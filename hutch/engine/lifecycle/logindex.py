"""When each line of an entrypoint's output was written: ``sb.logs`` and ``app.logs`` give
Modal's timestamped entries (``fetch(since=, until=)``, ``tail(n)``) from it.

Why a side file: the entrypoint writes its stdout and stderr straight into its log files
(the engine is not in that path, so output costs no copies), and nothing records when a
byte arrived.  A task per running sandbox watches the two files with inotify and appends
``fd end-offset time`` to ``logs.index`` (beside the logs, where the sandbox cannot write)
whenever one has grown, at most every ``COALESCE`` seconds: a line's time is when the
engine saw its last byte, within ``COALESCE`` (plus scheduling) of its write.  Records are
about 30 bytes; past ``DENSE_RECORDS`` of them the interval grows to ``SPARSE`` so a
chatty sandbox running for days keeps its index to a few MB.  Output written while no
daemon ran gets the time the next one saw it.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import trio

from hutch.engine.kernel import linux
from hutch.engine.storage import rootfs

log = logging.getLogger("hutch.sandbox")

INDEX_FILE = "logs.index"
COALESCE = 0.05
DENSE_RECORDS = 100_000
SPARSE = 2.0
#: Longest message of one entry: a longer line is cut into pieces this long.
MAX_MESSAGE = 64 * 1024
SOURCES: dict[int, Literal["stdout", "stderr"]] = {1: "stdout", 2: "stderr"}


def _paths(dirs: rootfs.SandboxDirs) -> dict[int, Path]:
    return {1: dirs.stdout, 2: dirs.stderr}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _marks(index: Path) -> dict[int, tuple[list[int], list[float]]]:
    """fd -> (end offsets, times), in the order written (offsets grow)."""
    marks: dict[int, tuple[list[int], list[float]]] = {1: ([], []), 2: ([], [])}
    with contextlib.suppress(OSError):
        for line in index.read_bytes().splitlines():
            try:
                fd, end, at = line.split()
                ends, times = marks[int(fd)]
                if not ends or int(end) > ends[-1]:
                    ends.append(int(end))
                    times.append(float(at))
            except (ValueError, KeyError):
                continue  # a record cut short by a crash
    return marks


class LogIndex:
    """The index of one sandbox's logs, written only from the engine's event loop (the
    watcher, the supervisor's last look, a reader's ``record`` first), so the first record
    of each offset is the one every reader sees."""

    def __init__(self, dirs: rootfs.SandboxDirs) -> None:
        self.paths = _paths(dirs)
        self.file = dirs.root / INDEX_FILE
        marks = _marks(self.file)
        self.seen = {fd: (ends[-1] if ends else 0) for fd, (ends, _) in marks.items()}
        self.records = sum(len(ends) for ends, _ in marks.values())

    def record(self) -> None:
        """Record the growth of the log files since the last look, at this time."""
        now = time.time()
        grown = b""
        for fd, path in self.paths.items():
            size = _size(path)
            if size > self.seen[fd]:
                grown += b"%d %d %.6f\n" % (fd, size, now)
                self.seen[fd] = size
                self.records += 1
        if grown:
            with contextlib.suppress(OSError), open(self.file, "ab") as out:
                out.write(grown)

    async def keep(self, done: trio.Event) -> None:
        """Record as the files grow until the sandbox has ended (``done``)."""
        watched = [str(p) for p in self.paths.values() if p.exists()]
        if not watched:
            return
        try:
            watch = linux.inotify_watch(watched, linux.IN_MODIFY)
        except OSError as exc:  # (out of inotify instances): readers still record
            log.warning("the output of %s is timed when read: %s", self.file.parent.name, exc)
            return
        try:
            while not done.is_set():
                self.record()
                async with trio.open_nursery() as waits:  # a write, or the end
                    waits.start_soon(_cancel_after, done.wait(), waits.cancel_scope)
                    waits.start_soon(_cancel_after, trio.lowlevel.wait_readable(watch),
                                     waits.cancel_scope)
                _drain(watch)
                with trio.move_on_after(COALESCE if self.records < DENSE_RECORDS else SPARSE):
                    await done.wait()
            self.record()
        finally:
            os.close(watch)


async def _cancel_after(wait: Awaitable[object], scope: trio.CancelScope) -> None:
    await wait
    scope.cancel()


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass


@dataclass(frozen=True)
class Entry:
    time: float
    fd: int  # 1 stdout, 2 stderr, 0 the engine's own ("system")
    message: bytes


def _lines(data: bytes) -> list[tuple[int, bytes]]:
    """(end offset, line) for each line of ``data`` (its newline kept; cut at
    ``MAX_MESSAGE``)."""
    found = []
    start = 0
    while start < len(data):
        newline = data.find(b"\n", start, start + MAX_MESSAGE)
        end = newline + 1 if newline >= 0 else min(len(data), start + MAX_MESSAGE)
        found.append((end, data[start:end]))
        start = end
    return found


def entries(dirs: rootfs.SandboxDirs, fds: tuple[int, ...] = (1, 2), *,
            live: bool = False) -> list[Entry]:
    """The entrypoint's output as timed lines, oldest first.  Lines past the last record
    are left out of a ``live`` sandbox's (the next answer has them, with their recorded
    time); an ended sandbox has none unless an engine without this index ran it, and
    those get the file's modification time."""
    marks = _marks(dirs.root / INDEX_FILE)
    found: list[Entry] = []
    for fd, path in _paths(dirs).items():
        if fd not in fds:
            continue
        try:
            with open(path, "rb") as f:
                data = f.read()
                written = os.fstat(f.fileno()).st_mtime
        except OSError:
            continue
        ends, times = marks[fd]
        for end, line in _lines(data):
            i = bisect.bisect_left(ends, end)
            if i < len(times):
                found.append(Entry(times[i], fd, line))
            elif not live:
                found.append(Entry(max([written, *times[-1:]]), fd, line))
    found.sort(key=lambda e: e.time)  # stable: each file's lines keep their order
    return found
