"""SandboxFS against a real directory tree: files that could make an open wait (FIFOs,
sockets, devices, leases) are refused at once and typed; listings, walks and recursive
removal are bounded (entries, depth, deadline)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch.api.errors import STATUS
from hutch.engine.errors import TimedOut
from hutch.engine.files import sandboxfs
from hutch.engine.files.sandboxfs import FileError, SandboxFS

HOLD_LEASE = """
import fcntl, os, signal, sys, time
signal.signal(signal.SIGIO, signal.SIG_IGN)
fd = os.open(sys.argv[1], os.O_WRONLY)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
print("leased", flush=True)
time.sleep(60)
"""


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[SandboxFS]:
    with SandboxFS(str(tmp_path)) as fs:
        yield fs


def _refused(fs: SandboxFS, path: str, flags: int) -> FileError:
    start = time.monotonic()
    with pytest.raises(FileError) as info:
        os.close(fs.open_regular(path, flags))
    assert time.monotonic() - start < 0.5
    return info.value


@pytest.mark.parametrize("flags", [os.O_RDONLY, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                                   os.O_WRONLY | os.O_APPEND | os.O_CREAT, os.O_WRONLY])
def test_fifos_sockets_and_devices_are_refused_unopened(fs: SandboxFS, tmp_path: Path,
                                                        flags: int) -> None:
    os.mkfifo(tmp_path / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    os.symlink("/dev/zero", tmp_path / "zero")  # resolved inside the root: missing
    (tmp_path / "dev").mkdir()
    for name, what in [("fifo", "a FIFO"), ("sock", "a socket")]:
        error = _refused(fs, name, flags)
        assert (error.type, STATUS[error.type]) == ("file_error", 400)
        assert f"Not a regular file ({what})" in error.message
    assert _refused(fs, "dev", flags).type == "is_a_directory"
    if not flags & os.O_CREAT:
        assert _refused(fs, "zero", flags).type == "file_not_found"
    sock.close()


def test_a_fifo_with_a_reader_is_not_written(fs: SandboxFS, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    reader = os.open(tmp_path / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    try:
        _refused(fs, "fifo", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        assert os.read(reader, 1) == b""  # no writer now, and nothing was written
    finally:
        os.close(reader)


def test_a_device_is_refused(tmp_path: Path) -> None:
    with SandboxFS("/") as root:
        assert "a device" in _refused(root, "/dev/zero", os.O_RDONLY).message
        assert "a device" in _refused(root, "/dev/null", os.O_WRONLY | os.O_CREAT).message


def test_a_leased_file_is_busy_at_once(fs: SandboxFS, tmp_path: Path) -> None:
    """Before, the open spun in a retry loop for the whole lease-break-time (45 s)."""
    leased = tmp_path / "leased"
    leased.write_text("secret")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LEASE, str(leased)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "leased\n"
        cpu = time.process_time()
        for flags in (os.O_RDONLY, os.O_WRONLY | os.O_TRUNC):
            error = _refused(fs, "leased", flags)
            assert (error.type, STATUS[error.type]) == ("file_busy", 409)
            assert "lease" in error.message
        assert time.process_time() - cpu < 0.2
    finally:
        holder.kill()
        holder.wait()
    os.close(fs.open_regular("leased", os.O_RDONLY))  # the lease is gone with its holder


def test_regular_files_open_as_asked(fs: SandboxFS, tmp_path: Path) -> None:
    fd = fs.open_regular("new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"hello")
    os.close(fd)
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileError) as info:
        fs.open_regular("new", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    assert info.value.type == "file_exists"
    fd = fs.open_regular("new", os.O_WRONLY | os.O_APPEND)
    os.write(fd, b" world")
    os.close(fd)
    fd = fs.open_regular("new", os.O_RDONLY)
    assert os.read(fd, 100) == b"hello world" and os.get_blocking(fd)
    os.close(fd)
    fd = fs.open_regular("new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.close(fd)
    assert (tmp_path / "new").read_bytes() == b""


def test_listing_is_sorted_and_bounded(fs: SandboxFS, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ["b", "a", "c"]:
        (tmp_path / name).write_text(name)
    dirfd, names = fs.names("/", time.monotonic() + 10)
    try:
        assert names == ["a", "b", "c"]
        (tmp_path / "b").unlink()  # gone between the names and the stats: left out
        assert [e.name for e in fs.entries(dirfd, names)] == ["a", "c"]
    finally:
        os.close(dirfd)
    for n in range(600):
        (tmp_path / f"f{n}").touch()
    with pytest.raises(TimedOut):
        fs.names("/", time.monotonic() - 1)
    monkeypatch.setattr(sandboxfs, "MAX_LIST_ENTRIES", 300)
    with pytest.raises(FileError, match="More than 300 entries"):
        fs.names("/", time.monotonic() + 10)
    with pytest.raises(FileError, match="More than 300 entries"):
        fs.walk("/", time.monotonic() + 10)


def test_walk_lists_symlinks_without_following_them(fs: SandboxFS, tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "f").write_text("x")
    os.symlink("/", tmp_path / "d" / "root")
    os.symlink("..", tmp_path / "d" / "up")
    found = {path: e.type for path, e in fs.walk("/d", time.monotonic() + 10)}
    assert found == {"/d/e": "directory", "/d/e/f": "file", "/d/root": "symlink",
                     "/d/up": "symlink"}


def test_recursive_removal_is_bounded(fs: SandboxFS, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "big"
    big.mkdir()
    for n in range(1000):
        (big / f"f{n}").touch()
    with pytest.raises(TimedOut, match="entries removed"):
        fs.remove("/big", recursive=True, deadline=time.monotonic() - 1)
    fs.remove("/big", recursive=True, deadline=time.monotonic() + 10)
    assert not big.exists()
    deep = tmp_path / "deep"
    (deep / ("d/" * 20)).mkdir(parents=True)
    os.symlink("/", deep / "d" / "root")  # removed, never followed
    monkeypatch.setattr(sandboxfs, "MAX_REMOVE_DEPTH", 10)
    with pytest.raises(FileError, match="deeper than 10 levels"):
        fs.remove("/deep", recursive=True)
    monkeypatch.setattr(sandboxfs, "MAX_REMOVE_DEPTH", 128)
    fs.remove("/deep", recursive=True)
    assert not deep.exists() and Path("/etc/hostname").exists()
