"""When each line of an entrypoint's output was written: ``sb.logs`` and ``app.logs`` give
Modal's timestamped entries (``fetch(since=, until=)``, ``tail(n)``) from it.

Why a side file: the entrypoint writes its stdout and stderr straight into its log files
(the engine is not in that path, so output costs no copies), and nothing records when a
byte arrived.  One inotify instance watches the files of every running sandbox
(:class:`LogWatcher`) and appends ``fd end-offset time`` to the sandbox's ``logs.index``
(beside the logs, where the sandbox cannot write) whenever one has grown, at most every
``COALESCE`` seconds: a line's time is when the engine saw its last byte, within
``COALESCE`` (plus scheduling) of its write.  Records are about 26 bytes; past
``DENSE_RECORDS`` of them a sandbox's are at most every ``SPARSE`` seconds, so a chatty
sandbox running for days keeps its index to a few MB.  Output written while no daemon ran
gets the time the next one saw it.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import struct
import time
from collections.abc import Callable, Iterator
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
#: About the size of one record (to count a restarted daemon's records by the file's size).
RECORD_BYTES = 26
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
        # Not read back (a day's index is megabytes, and a restarted daemon makes one of
        # these per sandbox on its event loop): the first look records the sizes as they
        # are, and a record that does not grow an offset is ignored by readers.
        self.seen = {1: 0, 2: 0}
        self.records = _size(self.file) // RECORD_BYTES
        self.last = 0.0

    def record(self) -> None:
        """Record the growth of the log files since the last look, at this time."""
        now = self.last = time.time()
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

_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then the name: none for files)


class LogWatcher:
    """One inotify instance for the logs of every running sandbox, whose growth it records
    at most every ``COALESCE`` seconds.  Why one: an instance per sandbox would take the
    user's instances (128 by default, ``fs.inotify.max_user_instances``) from file watches
    and log followers past a hundred sandboxes; watches are plentiful."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._by_wd: dict[int, LogIndex] = {}
        self._wds: dict[int, list[int]] = {}  # id(index) -> its watches
        self._grown: set[int] = set()

    def watch(self, index: LogIndex) -> None:
        """Record ``index``'s growth until :meth:`forget` (logged and skipped if the kernel
        refuses: its lines are then timed when read)."""
        try:
            if self._fd is None:
                self._fd = linux.inotify_init()
            wds = [linux.inotify_add(self._fd, str(p), linux.IN_MODIFY)
                   for p in index.paths.values() if p.exists()]
        except OSError as exc:
            log.warning("the output of %s is timed when read: %s", index.file.parent.name, exc)
            return
        self._wds[id(index)] = wds
        for wd in wds:
            self._by_wd[wd] = index

    def forget(self, index: LogIndex) -> None:
        for wd in self._wds.pop(id(index), []):
            if self._by_wd.get(wd) is index:
                del self._by_wd[wd]
                if self._fd is not None:
                    linux.inotify_remove(self._fd, wd)

    async def run(self) -> None:
        """Wait for writes and record them, for as long as the engine runs."""
        while True:
            if self._fd is None:
                await trio.sleep(COALESCE)
                continue
            await trio.lowlevel.wait_readable(self._fd)
            await trio.sleep(COALESCE)  # (one record for a burst of writes)
            for wd in self._read_events():
                index = self._by_wd.get(wd)
                if index is not None and (index.records < DENSE_RECORDS
                                          or time.time() - index.last >= SPARSE):
                    index.record()

    def _read_events(self) -> set[int]:
        assert self._fd is not None
        wds: set[int] = set()
        with contextlib.suppress(BlockingIOError):
            while data := os.read(self._fd, 65536):
                at = 0
                while at + _EVENT.size <= len(data):
                    wd, _, _, length = _EVENT.unpack_from(data, at)
                    wds.add(wd)
                    at += _EVENT.size + length
        return wds


@dataclass(frozen=True)
class Entry:
    time: float
    fd: int  # 1 stdout, 2 stderr, 0 the engine's own ("system")
    message: bytes


#: Bytes read at a time (never the whole file: 64 MiB of one-byte lines would be 67
#: million entries in the engine's memory; a request makes only those it answers with).
CHUNK = 1 << 20


Read = Callable[[int, int], bytes]  # (size, offset) -> bytes


def _reader(path: Path) -> Read:
    """``pread`` of ``path``, opened for each read: a merge of many sandboxes' streams
    holds no descriptors between its reads."""
    def read(size: int, offset: int) -> bytes:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return b""
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)
    return read


def _lines(read: Read, start: int, limit: int, search: bytes = b"", whole_last: bool = True
           ) -> Iterator[tuple[int, bytes]]:
    """(end offset, line) for each line of the file from ``start`` (a line's start) to
    ``limit``, its newline kept, cut at ``MAX_MESSAGE``; with ``search``, runs of lines
    without it are skipped at the speed of ``bytes.find``; a last line without a newline
    only when ``whole_last``.  Read with ``pread`` (a mapping would fault if the sandbox
    truncated its log)."""
    buf, pos, base, read_at = b"", 0, start, start  # base: the file offset of buf[0]
    while True:
        if search:
            complete = buf.rfind(b"\n", pos) + 1
            if complete > pos:
                hit = buf.find(search, pos, complete)  # (no hit: skip those lines)
                pos = complete if hit < 0 else max(pos, buf.rfind(b"\n", pos, hit) + 1)
        newline = buf.find(b"\n", pos, pos + MAX_MESSAGE)
        if newline >= 0:
            end = newline + 1
        elif len(buf) - pos >= MAX_MESSAGE:
            end = pos + MAX_MESSAGE
        else:
            data = read(min(CHUNK, limit - read_at), read_at) if read_at < limit else b""
            if data:
                buf, base, pos = buf[pos:] + data, base + pos, 0
                read_at += len(data)
                continue
            if pos < len(buf) and whole_last:
                yield base + len(buf), buf[pos:]
            return
        yield base + end, buf[pos:end]
        pos = end


def _start_of_tail(read: Read, limit: int, count: int) -> int:
    """Where the last ``count`` lines before ``limit`` begin (at least that many): after
    the ``count + 1``-th newline from the end."""
    at, wanted = limit, count + 1
    while at > 0:
        size = min(CHUNK, at)
        data = read(size, at - size)
        at -= size
        found = data.count(b"\n")
        if found < wanted:
            wanted -= found
            continue
        cut = size
        for _ in range(wanted):
            cut = data.rindex(b"\n", 0, cut)
        return at + cut + 1
    return 0


def _line_start(read: Read, offset: int) -> int:
    """The start of the line that holds the byte at ``offset``."""
    at = offset
    while at > 0:
        size = min(CHUNK, at)
        newline = read(size, at - size).rfind(b"\n")
        if newline >= 0:
            return at - size + newline + 1
        at -= size
    return 0


def streams(dirs: rootfs.SandboxDirs, fds: tuple[int, ...] = (1, 2), *, live: bool = False,
            since: float = 0.0, search: bytes = b"", tail: int | None = None
            ) -> list[Iterator[Entry]]:
    """:func:`stream` of each of ``fds``, with the index read once."""
    marks = _marks(dirs.root / INDEX_FILE)
    return [stream(dirs, fd, marks[fd], live=live, since=since, search=search, tail=tail)
            for fd in fds]


def stream(dirs: rootfs.SandboxDirs, fd: int, marks: tuple[list[int], list[float]], *,
           live: bool, since: float = 0.0, search: bytes = b"", tail: int | None = None
           ) -> Iterator[Entry]:
    """The lines of stdout (1) or stderr (2) timed ``since`` or later (or the last
    ``tail`` ones), oldest first, made as they are read.  Lines past the last record are
    left out of a ``live`` sandbox's (the next answer has them, with their recorded time),
    and so is a last line still without its newline; an ended sandbox has none past it
    unless an engine without this index ran it, and those get the file's modification
    time."""
    ends, times = marks
    path = _paths(dirs)[fd]
    try:
        stat = path.stat()
    except OSError:
        return
    read = _reader(path)
    written = max([stat.st_mtime, *times[-1:]])  # (the clock of mtimes is coarser)
    limit = min(ends[-1], stat.st_size) if live and ends else 0 if live else stat.st_size
    first = bisect.bisect_left(times, since)  # the first record timed since or later
    if tail is not None:
        start = _start_of_tail(read, limit, tail)
    elif first == 0:
        start = 0
    else:  # lines that end by the previous record are older: from the one after it
        start = _line_start(read, min(ends[first - 1], limit))
    for end, line in _lines(read, start, limit, search, whole_last=not live):
        i = bisect.bisect_left(ends, end)
        at = times[i] if i < len(times) else written
        if at >= since:
            yield Entry(at, fd, line)
