"""Streamed listings and copies: the JSON document a batch at a time, the ``error`` member
that ends a failed one, and copies that refuse FIFOs at either end at once."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from hutch import exception
from hutch.engine.errors import Invalid, TimedOut
from hutch.engine.files import filestreams
from hutch.engine.files.fileops import FileOps
from hutch.engine.files.filestreams import copy_files, entry_row, list_directory, walk_directory
from hutch.engine.files.sandboxfs import FileError, SandboxFS
from hutch.sdk.files import listing


async def _body(stream: AsyncIterator[bytes]) -> dict[str, Any]:
    parts = [part async for part in stream]
    doc: dict[str, Any] = json.loads(b"".join(parts))
    return doc


def test_a_listing_streams_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                      ) -> None:
    monkeypatch.setattr(filestreams, "LIST_BATCH", 7)
    for n in range(50):
        (tmp_path / f"f{n:02d}").write_text("x" * n)
    ops = FileOps()

    async def main() -> tuple[int, dict[str, Any]]:
        with SandboxFS(str(tmp_path)) as fs:
            stream = await list_directory(ops, "sandbox A", fs, "/", entry_row)
        parts = [part async for part in stream]  # the root was closed: the listing's own fd
        return len(parts), json.loads(b"".join(parts))

    count, doc = trio.run(main)
    assert count == 2 + 50 // 7 + 1  # head, 8 batches, tail
    assert [e["name"] for e in listing(doc)] == [f"f{n:02d}" for n in range(50)]
    assert doc["entries"][3]["size"] == 3


def test_a_batch_past_its_deadline_ends_the_document_with_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for n in range(10):
        (tmp_path / f"f{n}").touch()
    monkeypatch.setattr(filestreams, "LIST_BATCH", 4)
    calls = 0
    real = SandboxFS.entries

    def slow_after_first(dirfd: int, names: list[str]) -> Any:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise TimedOut("listing '/' did not finish within its 30 s deadline")
        return real(dirfd, names)

    monkeypatch.setattr(SandboxFS, "entries", staticmethod(slow_after_first))

    async def main() -> dict[str, Any]:
        with SandboxFS(str(tmp_path)) as fs:
            return await _body(await list_directory(FileOps(), "a", fs, "/", entry_row))

    doc = trio.run(main)
    assert len(doc["entries"]) == 4 and doc["error"]["type"] == "timeout"
    with pytest.raises(exception.TimeoutError, match="deadline"):
        listing(doc)


def test_a_recursive_listing_is_sorted_by_path(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a-b").touch()
    (tmp_path / "a" / "b" / "c").touch()

    async def main() -> dict[str, Any]:
        with SandboxFS(str(tmp_path)) as fs:
            return await _body(await walk_directory(
                FileOps(), "v", fs, "/", lambda p, e: {"path": p, "type": e.type}))

    assert [e["path"] for e in trio.run(main)["entries"]] == ["/a", "/a-b", "/a/b", "/a/b/c"]


def test_copies_refuse_fifos_and_directories_at_once(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"data" * 100_000)
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    ops = FileOps()

    async def copy(sources: list[str], dest: str) -> None:
        with SandboxFS(str(tmp_path)) as fs, trio.fail_after(2):
            await copy_files(ops, "v", fs, sources, dest)

    trio.run(copy, ["/src"], "/copy")
    assert (tmp_path / "copy").read_bytes() == b"data" * 100_000
    trio.run(copy, ["/src", "/copy"], "/dir")
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == ["copy", "src"]
    with pytest.raises(FileError, match="a FIFO"):
        trio.run(copy, ["/src"], "/fifo")
    with pytest.raises(FileError, match="a FIFO"):
        trio.run(copy, ["/fifo"], "/copy2")
    with pytest.raises(Invalid, match="is a directory"):
        trio.run(copy, ["/dir"], "/copy3")
