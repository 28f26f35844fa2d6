"""hutch.engine.lifecycle.logindex: lines get the time of the first record that covers
them; a torn record is skipped; a live sandbox's unrecorded lines wait for the next read;
reading starts where ``since`` or ``tail`` needs it and skips what ``search`` excludes."""

from __future__ import annotations

import heapq
import os
from pathlib import Path
from typing import Any

from hutch.engine.lifecycle import logindex
from hutch.engine.storage.rootfs import SandboxDirs


def _dirs(tmp_path: Path) -> SandboxDirs:
    dirs = SandboxDirs(tmp_path / "sb")
    dirs.logs.mkdir(parents=True)
    dirs.stdout.write_bytes(b"")
    dirs.stderr.write_bytes(b"")
    return dirs


def _read(dirs: SandboxDirs, fds: tuple[int, ...] = (1, 2), **query: Any
          ) -> list[tuple[float, int, bytes]]:
    merged = heapq.merge(*logindex.streams(dirs, fds, **query), key=lambda e: e.time)
    return [(e.time, e.fd, e.message) for e in merged]


def _index(dirs: SandboxDirs, text: bytes) -> None:
    (dirs.root / logindex.INDEX_FILE).write_bytes(text)


def test_lines_take_the_first_record_covering_them(tmp_path: Path) -> None:
    dirs = _dirs(tmp_path)
    dirs.stdout.write_bytes(b"a\nb\nc\n")
    dirs.stderr.write_bytes(b"err\n")
    _index(dirs, b"1 2 10.0\n2 4 11.5\n1 4 12.0\n1 4 99.0\n1 6 13.0\n2 9 14")  # dup, torn
    assert _read(dirs) == [(10.0, 1, b"a\n"), (11.5, 2, b"err\n"), (12.0, 1, b"b\n"),
                           (13.0, 1, b"c\n")]
    assert [m for _, _, m in _read(dirs, (2,))] == [b"err\n"]


def test_unrecorded_lines_wait_while_live_and_get_the_mtime_after(tmp_path: Path) -> None:
    dirs = _dirs(tmp_path)
    dirs.stdout.write_bytes(b"old\nnew\npart")
    os.utime(dirs.stdout, (50.0, 50.0))
    _index(dirs, b"1 4 40.0\n")
    assert _read(dirs, live=True) == [(40.0, 1, b"old\n")]
    assert _read(dirs) == [(40.0, 1, b"old\n"), (50.0, 1, b"new\n"), (50.0, 1, b"part")]
    _index(dirs, b"1 4 40.0\n1 12 45.0\n")  # a line still being written waits while live
    assert _read(dirs, live=True) == [(40.0, 1, b"old\n"), (45.0, 1, b"new\n")]


def test_since_starts_at_the_line_of_its_first_record(tmp_path: Path) -> None:
    dirs = _dirs(tmp_path)
    dirs.stdout.write_bytes(b"one\ntwo\nthree and more\n")
    _index(dirs, b"1 4 1.0\n1 10 2.0\n1 24 3.0\n")  # the second record ends mid-line
    assert [m for _, _, m in _read(dirs, since=2.0)] == [b"two\n", b"three and more\n"]
    assert [m for _, _, m in _read(dirs, since=2.5)] == [b"three and more\n"]
    assert _read(dirs, since=9.0) == []


def test_search_and_tail(tmp_path: Path) -> None:
    dirs = _dirs(tmp_path)
    lines = [b"line %d\n" % i for i in range(300_000)]
    dirs.stdout.write_bytes(b"".join(lines))
    _index(dirs, b"1 %d 5.0\n" % sum(map(len, lines)))
    assert [m for _, _, m in _read(dirs, search=b"line 123456\n")] == [b"line 123456\n"]
    assert [m for _, _, m in _read(dirs, search=b"99999")] == [
        b"line 99999\n", b"line 199999\n", b"line 299999\n"]
    tail = _read(dirs, tail=3)
    assert [m for _, _, m in tail][-3:] == lines[-3:] and len(tail) <= 4


def test_a_long_line_is_cut_and_a_truncated_log_is_read_as_it_is(tmp_path: Path) -> None:
    dirs = _dirs(tmp_path)
    dirs.stdout.write_bytes(b"x" * (logindex.MAX_MESSAGE + 10))
    assert [len(m) for _, _, m in _read(dirs)] == [logindex.MAX_MESSAGE, 10]
    _index(dirs, b"1 70000 1.0\n")  # records past the file's end: the sandbox truncated it
    dirs.stdout.write_bytes(b"short\n")
    assert [m for _, _, m in _read(dirs)] == [b"short\n"]
    assert [m for _, _, m in _read(dirs, live=True)] == [b"short\n"]


def test_record_appends_growth_once(tmp_path: Path) -> None:
    dirs = _dirs(tmp_path)
    dirs.stdout.write_bytes(b"x\n")
    index = logindex.LogIndex(dirs)
    index.record()
    index.record()  # nothing grew
    dirs.stdout.write_bytes(b"x\ny\n")
    index.record()
    records = (dirs.root / logindex.INDEX_FILE).read_bytes().splitlines()
    assert [r.split()[:2] for r in records] == [[b"1", b"2"], [b"1", b"4"]]
    again = logindex.LogIndex(dirs)  # a restarted daemon: its first look adds nothing new
    size = (dirs.root / logindex.INDEX_FILE).stat().st_size
    assert again.records == size // logindex.RECORD_BYTES
    again.record()
    assert [(e.time, e.message) for e in logindex.streams(dirs, (1,))[0]] == [
        (float(records[0].split()[2]), b"x\n"), (float(records[1].split()[2]), b"y\n")]
