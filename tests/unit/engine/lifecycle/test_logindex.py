"""hutch.engine.lifecycle.logindex: lines get the time of the first record that covers
them; a torn record is skipped; a live sandbox's unrecorded lines wait for the next read."""

from __future__ import annotations

import os
from pathlib import Path

from hutch.engine.lifecycle import logindex
from hutch.engine.storage.rootfs import SandboxDirs


def _dirs(tmp_path: Path) -> SandboxDirs:
    dirs = SandboxDirs(tmp_path / "sb")
    dirs.logs.mkdir(parents=True)
    return dirs


def test_lines_take_the_first_record_covering_them(tmp_path: Path) -> None:
    dirs = _dirs(tmp_path)
    dirs.stdout.write_bytes(b"a\nb\nc\n")
    dirs.stderr.write_bytes(b"err\n")
    (dirs.root / logindex.INDEX_FILE).write_bytes(
        b"1 2 10.0\n2 4 11.5\n1 4 12.0\n1 4 99.0\n1 6 13.0\n2 9 14")  # dup, torn
    found = logindex.entries(dirs)
    assert [(e.time, e.fd, e.message) for e in found] == [
        (10.0, 1, b"a\n"), (11.5, 2, b"err\n"), (12.0, 1, b"b\n"), (13.0, 1, b"c\n")]
    assert [e.message for e in logindex.entries(dirs, (2,))] == [b"err\n"]


def test_unrecorded_lines_wait_while_live_and_get_the_mtime_after(tmp_path: Path) -> None:
    dirs = _dirs(tmp_path)
    dirs.stdout.write_bytes(b"old\nnew\n")
    os.utime(dirs.stdout, (50.0, 50.0))
    (dirs.root / logindex.INDEX_FILE).write_bytes(b"1 4 40.0\n")
    assert [e.message for e in logindex.entries(dirs, live=True)] == [b"old\n"]
    assert [(e.time, e.message) for e in logindex.entries(dirs)] == [
        (40.0, b"old\n"), (50.0, b"new\n")]


def test_record_appends_growth_once(tmp_path: Path) -> None:
    dirs = _dirs(tmp_path)
    dirs.stdout.write_bytes(b"x\n")
    dirs.stderr.write_bytes(b"")
    index = logindex.LogIndex(dirs)
    index.record()
    index.record()  # nothing grew
    dirs.stdout.write_bytes(b"x\ny\n")
    index.record()
    records = (dirs.root / logindex.INDEX_FILE).read_bytes().splitlines()
    assert [r.split()[:2] for r in records] == [[b"1", b"2"], [b"1", b"4"]]
    again = logindex.LogIndex(dirs)  # a restarted daemon continues from the records
    assert again.seen == {1: 4, 2: 0} and again.records == 2


def test_a_long_line_is_cut(tmp_path: Path) -> None:
    dirs = _dirs(tmp_path)
    dirs.stdout.write_bytes(b"x" * (logindex.MAX_MESSAGE + 10))
    found = logindex.entries(dirs)
    assert [len(e.message) for e in found] == [logindex.MAX_MESSAGE, 10]
