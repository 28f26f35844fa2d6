"""The fork server's pieces that need no sandbox: framing, PATH lookup, root's home."""

from __future__ import annotations

import errno
import os
import socket
import threading
from pathlib import Path

import pytest

from hutch.engine.commands import forkserver


def test_frames_carry_json_and_descriptors() -> None:
    a, b = socket.socketpair()
    r, w = os.pipe()
    try:
        big = {"argv": ["x" * 300_000], "n": 1}
        forkserver.send(a, {"first": True}, [w])
        os.close(w)
        obj, fds = forkserver.receive(b)
        assert obj == {"first": True} and len(fds) == 1
        assert not os.get_inheritable(fds[0])  # received close-on-exec
        os.write(fds[0], b"through the passed fd")
        os.close(fds[0])
        assert os.read(r, 100) == b"through the passed fd"
        # a frame larger than the socket buffer arrives whole, in order
        sender = threading.Thread(target=forkserver.send, args=(a, big))
        sender.start()
        assert forkserver.receive(b) == (big, [])
        sender.join()
        a.close()
        assert forkserver.receive(b) == (None, [])
    finally:
        os.close(r)
        b.close()


def _exe(path: Path, mode: int = 0o755) -> Path:
    path.write_text("#!/bin/sh\n")
    path.chmod(mode)
    return path


def test_resolve_looks_in_the_commands_path_in_order(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    _exe(second / "tool")
    assert forkserver.resolve("tool", f"{first}:{second}") == str(second / "tool")
    _exe(first / "tool")
    assert forkserver.resolve("tool", f"{first}:{second}") == str(first / "tool")


def test_resolve_skips_what_cannot_run(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    _exe(tmp_path / "dir" / "tool", 0o644)
    with pytest.raises(OSError) as denied:
        forkserver.resolve("tool", str(tmp_path / "dir"))
    if os.geteuid() != 0:  # root may run anything with an x bit; here there is none
        assert denied.value.errno == errno.EACCES
    with pytest.raises(OSError) as missing:
        forkserver.resolve("nothing-here", str(tmp_path))
    assert missing.value.errno == errno.ENOENT
    assert "executable file `nothing-here` not found in $PATH" in str(missing.value.strerror)
    with pytest.raises(OSError) as directory:
        forkserver.resolve(str(tmp_path), "/bin")
    assert directory.value.errno == errno.EACCES
    with pytest.raises(OSError) as empty:
        forkserver.resolve("", "/bin")
    assert empty.value.errno == errno.ENOENT


def test_a_path_with_a_slash_is_taken_as_it_is(tmp_path: Path) -> None:
    tool = _exe(tmp_path / "tool")
    assert forkserver.resolve(str(tool), "/nowhere") == str(tool)
    with pytest.raises(OSError) as missing:
        forkserver.resolve(str(tmp_path / "gone"), "/bin")
    assert missing.value.errno == errno.ENOENT
