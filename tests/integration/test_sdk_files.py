"""A sandbox's files through the SDK: ``sb.filesystem``, ``sb.open`` handles, ``ls/mkdir/rm``.

``F*`` are the examples of Modal's Filesystem guide.  The confinement tests plant hostile
symlinks inside the sandbox and check that no call reads, writes or removes a host file.
``xfail(strict=True)`` tests pin hutch bugs: they turn into failures once a bug is fixed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import resource
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import hutch as modal
from hutch import exception as exc
from hutch.api.paths import socket_path
from hutch.sdk.transport import request_blocking
from tests.conftest import DATA_DIR
from tests.helpers import wait_for

MiB = 1 << 20
NOT_FOUND = (FileNotFoundError, exc.SandboxFilesystemNotFoundError)


@pytest.fixture
def sb(engine: dict[str, Any]) -> Iterator[modal.Sandbox]:
    sandbox = modal.Sandbox.create(timeout=300, workdir="/work")
    yield sandbox
    sandbox.terminate()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def sh(sb: modal.Sandbox, script: str) -> str:
    p = sb.exec("sh", "-c", script, timeout=60)
    out, err = p.stdout.read(), p.stderr.read()
    assert p.wait() == 0, err
    return str(out)


def check_error(call: Callable[[], object], builtin: type[OSError],
                typed: type[exc.SandboxFilesystemError]) -> None:
    with pytest.raises(builtin) as info:
        call()
    assert isinstance(info.value, typed), repr(info.value)


# Modal's Filesystem guide -------------------------------------------------------------------
def test_f1_write_text_read_text(sb: modal.Sandbox) -> None:
    sb.filesystem.write_text("Hello, world!\n", "/tmp/hello.txt")
    assert sb.filesystem.read_text("/tmp/hello.txt") == "Hello, world!\n"


def test_f2_copy_from_local_copy_to_local(sb: modal.Sandbox, tmp_path: Path) -> None:
    (tmp_path / "data.bin").write_bytes(b"local data\n" * 1000)
    sb.filesystem.copy_from_local(tmp_path / "data.bin", "/tmp/data.bin")
    assert sh(sb, "wc -c < /tmp/data.bin") == "11000\n"
    sb.filesystem.copy_to_local("/tmp/data.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == b"local data\n" * 1000


def test_f3_directories(sb: modal.Sandbox) -> None:
    fs = sb.filesystem
    fs.make_directory("/tmp/mydir")
    fs.write_text("a", "/tmp/mydir/a.txt")
    fs.write_text("bbb", "/tmp/mydir/b.txt")
    fs.make_directory("/tmp/mydir/sub")
    entries = fs.list_files("/tmp/mydir")
    assert [(e.name, e.type.value) for e in entries] == \
        [("a.txt", "file"), ("b.txt", "file"), ("sub", "directory")]
    assert [e.size for e in entries[:2]] == [1, 3]
    assert fs.stat("/tmp/mydir/b.txt").size == 3
    assert fs.read_text("/tmp/mydir/b.txt") == "bbb"
    fs.remove("/tmp/mydir", recursive=True)
    check_error(lambda: fs.stat("/tmp/mydir"), *NOT_FOUND)
    assert sh(sb, "test ! -e /tmp/mydir && echo gone") == "gone\n"


# errors ---------------------------------------------------------------------------------------
def test_errors_are_typed_and_builtin(sb: modal.Sandbox) -> None:
    fs = sb.filesystem
    sh(sb, "mkdir -p /tmp/full && touch /tmp/full/f")
    for call in (lambda: fs.read_text("/tmp/missing"), lambda: fs.read_bytes("/tmp/missing"),
                 lambda: fs.stat("/tmp/missing"), lambda: fs.list_files("/tmp/missing"),
                 lambda: fs.remove("/tmp/missing"), lambda: sb.open("/tmp/missing", "r"),
                 lambda: sb.open("/tmp/no/x", "w"),
                 lambda: fs.make_directory("/tmp/no/d", create_parents=False)):
        check_error(call, *NOT_FOUND)
    for call in (lambda: fs.read_text("/tmp"), lambda: fs.write_text("x", "/tmp")):
        check_error(call, IsADirectoryError, exc.SandboxFilesystemIsADirectoryError)
    check_error(lambda: fs.list_files("/tmp/full/f"), NotADirectoryError,
                exc.SandboxFilesystemNotADirectoryError)
    check_error(lambda: fs.make_directory("/tmp/full", create_parents=False),
                FileExistsError, exc.SandboxFilesystemPathAlreadyExistsError)
    fs.make_directory("/tmp/full", create_parents=True)  # like mkdir -p: no error
    check_error(lambda: fs.remove("/tmp/full"), OSError,
                exc.SandboxFilesystemDirectoryNotEmptyError)
    assert sh(sb, "ls /tmp/full") == "f\n"
    with pytest.raises(exc.InvalidError):
        fs.remove("/")


@pytest.mark.parametrize("path", ["/proc/sys/kernel/hostname", "/sys/kernel/hutch-test",
                                  "/etc/hostname"])
def test_read_only_places_raise_filesystem_errors(sb: modal.Sandbox, path: str) -> None:
    with pytest.raises(exc.SandboxFilesystemError) as info:
        sb.filesystem.write_text("pwned", path)
    assert isinstance(info.value, OSError)
    assert sh(sb, "cat /etc/hostname /proc/sys/kernel/hostname") == f"{sb.object_id}\n" * 2


def test_terminated_sandbox_is_a_conflict(sb: modal.Sandbox, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    sb.terminate(wait=True)
    fs = sb.filesystem
    for call in (lambda: fs.read_text("/etc/hostname"), lambda: fs.write_text("x", "/tmp/x"),
                 lambda: fs.list_files("/"), lambda: fs.stat("/"),
                 lambda: fs.make_directory("/tmp/d"), lambda: fs.remove("/tmp"),
                 lambda: fs.copy_from_local(tmp_path / "f", "/tmp/f"),
                 lambda: fs.copy_to_local("/etc/hostname", tmp_path / "g"),
                 lambda: sb.open("/etc/hostname"), lambda: sb.ls("/")):
        with pytest.raises(exc.ConflictError):
            call()


# paths and the exec view --------------------------------------------------------------------
def test_relative_paths_resolve_against_the_workdir(sb: modal.Sandbox) -> None:
    sb.filesystem.write_text("via api\n", "rel.txt")
    assert sh(sb, "cat /work/rel.txt") == "via api\n"
    sh(sb, "echo via exec > /work/from-exec.txt")
    assert sb.filesystem.read_text("from-exec.txt") == "via exec\n"
    sb.mkdir("sub")
    assert sh(sb, "test -d /work/sub && echo dir") == "dir\n"
    assert sb.ls(".") == ["from-exec.txt", "rel.txt", "sub"]
    assert sb.filesystem.read_text("../etc/hostname") == f"{sb.object_id}\n"


def test_api_and_exec_see_the_same_bytes(sb: modal.Sandbox) -> None:
    every = bytes(range(256)) * 4
    sb.filesystem.write_bytes(every, "/tmp/all.bin")
    assert sh(sb, "sha256sum < /tmp/all.bin").split()[0] == hashlib.sha256(every).hexdigest()
    sh(sb, "cp /tmp/all.bin /tmp/copy.bin && printf '\\377\\000' >> /tmp/copy.bin")
    assert sb.filesystem.read_bytes("/tmp/copy.bin") == every + b"\xff\x00"


def test_created_files_and_dirs_get_the_usual_modes(sb: modal.Sandbox) -> None:
    sb.filesystem.make_directory("/tmp/mode.d")
    sb.filesystem.write_text("for everyone", "/tmp/mode.d/f.txt")
    assert sb.filesystem.stat("/tmp/mode.d/f.txt").mode == 0o644
    assert sb.filesystem.stat("/tmp/mode.d").permissions == "drwxr-xr-x"
    assert sh(sb, "su nobody -s /bin/sh -c 'cat /tmp/mode.d/f.txt'") == "for everyone"


# sb.open ------------------------------------------------------------------------------------
def test_open_reading(sb: modal.Sandbox) -> None:
    sh(sb, "printf 'hello\\nwörld\\nend' > /tmp/r.txt")  # 16 bytes: ö is two
    with sb.open("/tmp/r.txt") as f:
        assert f.read(5) == "hello" and f.tell() == 5
        assert f.readline() == "\n" and f.readline() == "wörld\n"
        assert f.readline() == "end" and f.readline() == ""
        assert f.seek(0) == 0 and f.readlines() == ["hello\n", "wörld\n", "end"]
        assert f.seek(-3, 2) == 13 and f.read() == "end"
        assert f.seek(2, 0) == 2 and f.seek(2, 1) == 4 and f.read(1) == "o"
    assert f.closed
    with sb.open("/tmp/r.txt", "rb") as fb:
        assert fb.read() == "hello\nwörld\nend".encode()
        with pytest.raises(ValueError):
            fb.seek(0, 3)


def test_open_writing_modes(sb: modal.Sandbox) -> None:
    with sb.open("/tmp/w.txt", "w") as f:
        assert f.write("héllo") == 5
    assert sh(sb, "cat /tmp/w.txt") == "héllo"
    with sb.open("/tmp/w.txt", "a") as f:
        assert f.tell() == 6
        f.write("!")
    with sb.open("/tmp/w.txt", "ab") as f:
        f.write(b"\x00?")
    assert sb.filesystem.read_bytes("/tmp/w.txt") == "héllo!\x00?".encode()
    with sb.open("/tmp/w.txt", "wb") as f:
        f.write(b"0123456789")
    with sb.open("/tmp/w.txt", "r+") as f:
        f.seek(3)
        f.write("abc")
        assert f.read(2) == "67"
    assert sh(sb, "cat /tmp/w.txt") == "012abc6789"
    with sb.open("/tmp/w.txt", "w+") as f:
        assert f.read() == ""  # truncated at open
        f.write("new text")
        assert f.seek(0) == 0 and f.read() == "new text"
    with sb.open("/tmp/w.txt", "a+") as f:
        assert f.tell() == 8
        f.write(" appended")
        assert f.seek(0) == 0 and f.read() == "new text appended"
    with sb.open("/tmp/x.txt", "x") as f:
        f.write("exclusive")
    check_error(lambda: sb.open("/tmp/x.txt", "x"), FileExistsError,
                exc.SandboxFilesystemPathAlreadyExistsError)
    assert sh(sb, "cat /tmp/x.txt") == "exclusive"
    with sb.open("/tmp/t.txt", "w") as f, pytest.raises(TypeError):
        f.write(b"bytes into a text handle")
    with sb.open("/tmp/t.txt", "wb") as fb, pytest.raises(TypeError):
        fb.write("str into a bytes handle")
    with pytest.raises(exc.InvalidError):
        sb.open("/tmp/t.txt", "rw")


def test_flush_makes_writes_visible_before_close(sb: modal.Sandbox) -> None:
    f = sb.open("/tmp/flush.txt", "w")
    f.write("first part")
    f.flush()
    assert sh(sb, "cat /tmp/flush.txt") == "first part"
    f.write(", second part")
    f.close()
    assert sh(sb, "cat /tmp/flush.txt") == "first part, second part"


def test_handle_misuse_raises_value_error(sb: modal.Sandbox) -> None:
    with sb.open("/tmp/m.txt", "w") as f:
        for read in (f.read, f.readline, f.readlines):
            with pytest.raises(ValueError):
                read()
        f.write("x")
    with sb.open("/tmp/m.txt", "r") as f, pytest.raises(ValueError):
        f.write("y")
    for call in (f.read, f.readline, f.readlines, lambda: f.write("z"), f.flush,
                 lambda: f.seek(0)):
        with pytest.raises(ValueError):
            call()
    f.close()  # closing again is fine
    assert sh(sb, "cat /tmp/m.txt") == "x"


@pytest.mark.anyio
async def test_aio_forms(sb: modal.Sandbox, tmp_path: Path) -> None:
    async with await sb.open.aio("/tmp/aio.txt", "w+") as f:
        await f.write.aio("line1\nline2\n")
        await f.flush.aio()
        assert await f.seek.aio(0) == 0 and await f.readline.aio() == "line1\n"
        assert await f.readlines.aio() == ["line2\n"]
        assert await f.seek.aio(-6, 2) == 6 and await f.read.aio(5) == "line2"
    assert f.closed
    fs = sb.filesystem
    await fs.make_directory.aio("/tmp/ad/sub")
    await fs.write_bytes.aio(b"\x01\x02", "/tmp/ad/b")
    assert await fs.read_bytes.aio("/tmp/ad/b") == b"\x01\x02"
    assert [e.name for e in await fs.list_files.aio("/tmp/ad")] == ["b", "sub"]
    assert (await fs.stat.aio("/tmp/ad/b")).size == 2
    (tmp_path / "up").write_text("up")
    await fs.copy_from_local.aio(tmp_path / "up", "/tmp/ad/up")
    await fs.copy_to_local.aio("/tmp/ad/up", tmp_path / "down")
    assert (tmp_path / "down").read_text() == "up"
    await sb.mkdir.aio("/tmp/ad/m", parents=True)
    assert await sb.ls.aio("/tmp/ad") == ["b", "m", "sub", "up"]
    await sb.rm.aio("/tmp/ad", recursive=True)
    with pytest.raises(FileNotFoundError):
        await fs.stat.aio("/tmp/ad")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_aio_round_trip_under_both_backends(sb: modal.Sandbox) -> None:
    await sb.filesystem.write_text.aio("über", "/tmp/backend.txt")
    assert await sb.filesystem.read_text.aio("/tmp/backend.txt") == "über"
    async with await sb.open.aio("/tmp/backend.txt", "ab") as f:
        await f.write.aio(b"!")
    async with await sb.open.aio("/tmp/backend.txt", "rb") as f:
        assert await f.read.aio() == "über!".encode()
    with pytest.raises(exc.SandboxFilesystemNotFoundError):
        await sb.filesystem.read_text.aio("/tmp/nope")


def test_ls_mkdir_rm(sb: modal.Sandbox) -> None:
    sb.mkdir("/tmp/a/b/c", parents=True)
    check_error(lambda: sb.mkdir("/tmp/x/y"), *NOT_FOUND)  # parents=False by default
    sb.filesystem.write_text("f", "/tmp/a/f.txt")
    assert sb.ls("/tmp/a") == ["b", "f.txt"]
    with pytest.raises(exc.SandboxFilesystemDirectoryNotEmptyError):
        sb.rm("/tmp/a")
    sb.rm("/tmp/a/f.txt")
    sb.rm("/tmp/a", recursive=True)
    assert sh(sb, "test ! -e /tmp/a && echo gone") == "gone\n"


# confinement --------------------------------------------------------------------------------
@pytest.fixture
def hostile(sb: modal.Sandbox, tmp_path: Path) -> tuple[Path, bytes]:
    """A host dir with a marker file, and symlinks planted in the sandbox to get out."""
    host = tmp_path / "host"
    host.mkdir()
    secret = f"HOST-ONLY-{uuid.uuid4().hex}".encode()
    (host / "marker").write_bytes(secret)
    sh(sb, f"ln -s / /tmp/root && ln -s /proc/self/root /tmp/procroot && "
           f"ln -s /proc/1/root /tmp/init && ln -s ../../../../../.. /tmp/up && "
           f"ln -s {host} /tmp/hostpath && ln -s {DATA_DIR} /tmp/hostdata")
    return host, secret


def host_untouched(host: Path, secret: bytes) -> bool:
    return os.listdir(host) == ["marker"] and (host / "marker").read_bytes() == secret


def test_hostile_symlinks_read_only_the_sandbox(sb: modal.Sandbox,
                                                hostile: tuple[Path, bytes]) -> None:
    host, secret = hostile
    fs = sb.filesystem
    for path in ("/tmp/root/etc/hostname", "/tmp/up/etc/hostname", "/../../etc/hostname"):
        assert fs.read_text(path) == f"{sb.object_id}\n" != socket.gethostname() + "\n"
    escapes = ["/tmp/root", "/tmp/up", "/tmp/procroot", "/tmp/init", "/../../..", ""]
    for path in [p + str(host / "marker") for p in escapes] + [
            "/tmp/hostpath/marker", "/tmp/procroot/etc/hostname", "/tmp/init/etc/hostname",
            "/tmp/hostdata/state.db"]:
        try:
            data = fs.read_bytes(path)
        except exc.SandboxFilesystemError:
            continue
        assert data == f"{sb.object_id}\n".encode(), path  # only ever the sandbox's file
    for path in ("/tmp/hostpath", "/tmp/init", "/tmp/procroot", "/tmp/hostdata"):
        with pytest.raises(exc.SandboxFilesystemError):
            fs.list_files(path)
    assert secret not in sh(sb, "cat /tmp/hostpath/marker 2>&1 || true").encode()


def test_hostile_symlinks_write_and_remove_only_in_the_sandbox(
        sb: modal.Sandbox, hostile: tuple[Path, bytes], tmp_path: Path) -> None:
    host, secret = hostile
    fs = sb.filesystem
    sh(sb, f"mkdir -p {host}")  # the host dir's twin inside the sandbox
    for path in ("/tmp/hostpath/w1", f"/tmp/up{host}/w2", f"/tmp/root{host}/w3",
                 f"/../../..{host}/w4", f"{host}/w5"):
        fs.write_text("evil", path)
    for path in (f"/tmp/procroot{host}/w6", f"/tmp/init{host}/w7"):
        with pytest.raises(exc.SandboxFilesystemError):
            fs.write_text("evil", path)
    with sb.open("/tmp/hostpath/w8", "w") as f:
        f.write("evil")
    (tmp_path / "local").write_text("evil")
    fs.copy_from_local(tmp_path / "local", f"/tmp/up{host}/w9")
    fs.make_directory("/tmp/hostpath/d10", create_parents=False)
    assert host_untouched(host, secret)
    assert sh(sb, f"ls {host}").split() == ["d10", "w1", "w2", "w3", "w4", "w5", "w8", "w9"]

    etc = sb.ls("/etc")
    fs.remove("/tmp/root", recursive=True)  # the link, not what it points at
    fs.remove("/tmp/hostpath", recursive=True)
    fs.remove("/tmp/up/tmp/init", recursive=True)
    names = set(sb.ls("/tmp"))
    assert {"procroot", "up", "hostdata"} <= names and not {"root", "hostpath", "init"} & names
    assert sb.ls("/etc") == etc and fs.read_text("/etc/hostname") == f"{sb.object_id}\n"
    assert "w1" in sb.ls(str(host))
    fs.remove(f"/tmp/up{host}", recursive=True)  # the twin inside the sandbox
    assert sh(sb, f"test ! -e {host} && echo gone") == "gone\n"
    assert host_untouched(host, secret)


def test_swapped_in_directory_symlinks_stay_inside(sb: modal.Sandbox,
                                                    hostile: tuple[Path, bytes]) -> None:
    host, secret = hostile
    fs = sb.filesystem
    sh(sb, "mkdir /tmp/dir")
    fs.write_text("before", "/tmp/dir/f")
    sh(sb, "rm -r /tmp/dir && ln -s / /tmp/dir")
    fs.write_text("after", "/tmp/dir/swapped")
    assert sh(sb, "cat /swapped") == "after"
    sh(sb, f"mkdir -p {host}")  # the host dir's twin: what the link must resolve to
    swapper = (  # flips /tmp/swap between a real dir and the host dir, atomically
        "import os, time\nos.makedirs('/tmp/real')\nend, n = time.monotonic() + 30, 0\n"
        "while time.monotonic() < end and not os.path.exists('/tmp/stop'):\n"
        f"    os.symlink(('/tmp/real', {str(host)!r})[n % 2], '/tmp/new')\n"
        "    os.replace('/tmp/new', '/tmp/swap'); n += 1\nprint(n)\n")
    p = sb.exec("python3", "-c", swapper, timeout=60)
    wait_for(lambda: "swap" in sb.ls("/tmp"), what="the swapper to start")
    written = 0
    for i in range(150):
        with contextlib.suppress(exc.SandboxFilesystemNotFoundError):
            fs.write_text("evil", f"/tmp/swap/race-{i}")
            written += 1
        with pytest.raises(exc.SandboxFilesystemNotFoundError):
            fs.read_bytes("/tmp/swap/marker")
    fs.write_text("", "/tmp/stop")
    assert p.wait() == 0 and int(p.stdout.read()) > 150
    assert host_untouched(host, secret)
    # >=, not ==: a write that landed can still report ENOENT, as the route's final stat
    # resolves the path again after the swapper moved it (see the report).
    assert len(sb.ls("/tmp/real")) + len(sb.ls(str(host))) >= written > 0


def test_dotdot_paths_give_the_sandbox_files(sb: modal.Sandbox, tmp_path: Path) -> None:
    passwd = sh(sb, "cat /etc/passwd").encode()
    assert b"hutchtest" not in passwd and passwd != Path("/etc/passwd").read_bytes()
    sb.filesystem.copy_to_local("../../../../etc/passwd", tmp_path / "passwd")
    assert (tmp_path / "passwd").read_bytes() == passwd
    assert sb.filesystem.read_bytes("/../../../../etc/passwd") == passwd
    assert sb.filesystem.read_bytes("/etc/../../../etc/./passwd") == passwd


# streaming ----------------------------------------------------------------------------------
def peak_rss_kib(pid: int | str, reset: bool = False) -> int:
    """VmHWM; ``reset`` first sets it to the current RSS (clear_refs 5) where allowed."""
    if reset:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass  # then growth that stays under an earlier peak goes unseen
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0])


@pytest.mark.timeout(180)
def test_one_gib_streams_with_bounded_memory(sb: modal.Sandbox, tmp_path: Path) -> None:
    free = min(shutil.disk_usage(tmp_path).free, shutil.disk_usage(DATA_DIR).free)
    if free < 3 << 30:
        pytest.skip(f"needs 3 GiB free, has {free >> 20} MiB")
    src, dst, digest = tmp_path / "big.bin", tmp_path / "big.out", hashlib.sha256()
    try:
        noise = os.urandom(MiB)
        with src.open("wb") as f:
            for i in range(1024):  # every MiB differs, so reordering changes the digest
                chunk = i.to_bytes(8, "big") + noise[8:]
                digest.update(chunk)
                f.write(chunk)
        pid = request_blocking("GET", "/v1/engine")["pid"]
        engine0, self0 = peak_rss_kib(pid, reset=True), peak_rss_kib("self", reset=True)
        rusage0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.monotonic()
        sb.filesystem.copy_from_local(src, "/tmp/big.bin")
        t1 = time.monotonic()
        sb.filesystem.copy_to_local("/tmp/big.bin", dst)
        t2 = time.monotonic()
        engine_mib = (peak_rss_kib(pid) - engine0) / 1024
        self_mib = (peak_rss_kib("self") - self0) / 1024
        rusage_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rusage0) / 1024
        print(f"\n1 GiB up {1024 / (t1 - t0):.0f} MiB/s, down {1024 / (t2 - t1):.0f} MiB/s; "
              f"peak RSS growth: engine {engine_mib:.1f} MiB, client {self_mib:.1f} MiB "
              f"(ru_maxrss {rusage_mib:.1f} MiB)")
        check = hashlib.sha256()
        with dst.open("rb") as f:
            while block := f.read(MiB):
                check.update(block)
        assert check.hexdigest() == digest.hexdigest()
        assert sh(sb, "sha256sum < /tmp/big.bin").split()[0] == digest.hexdigest()
        assert engine_mib < 256 and self_mib < 256 and rusage_mib < 256
        assert t2 - t0 < 60
    finally:
        src.unlink(missing_ok=True)
        dst.unlink(missing_ok=True)


# verbose ------------------------------------------------------------------------------------
@pytest.fixture
def verbose_sb(engine: dict[str, Any], caplog: pytest.LogCaptureFixture
               ) -> Iterator[modal.Sandbox]:
    caplog.set_level(logging.INFO, logger="hutch.sandbox")
    sandbox = modal.Sandbox.create(timeout=120, verbose=True)
    yield sandbox
    sandbox.terminate()


def check_one_line_each(sb: modal.Sandbox, caplog: pytest.LogCaptureFixture,
                        calls: list[tuple[Callable[[], object], str]]) -> None:
    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "hutch.sandbox"]
    for call, path in calls:
        before = len(lines())
        call()
        new = lines()[before:]
        assert len(new) == 1 and sb.object_id in new[0] and path in new[0], (path, new)


def test_verbose_logs_each_file_operation(verbose_sb: modal.Sandbox, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    fs = verbose_sb.filesystem
    (tmp_path / "v").write_text("v")
    check_one_line_each(verbose_sb, caplog, [
        (lambda: fs.make_directory("/tmp/vd"), "/tmp/vd"),
        (lambda: fs.write_text("x", "/tmp/vd/a"), "/tmp/vd/a"),
        (lambda: fs.read_text("/tmp/vd/a"), "/tmp/vd/a"),
        (lambda: fs.list_files("/tmp/vd"), "/tmp/vd"),
        (lambda: fs.copy_from_local(tmp_path / "v", "/tmp/vd/c"), "/tmp/vd/c"),
        (lambda: fs.copy_to_local("/tmp/vd/c", tmp_path / "w"), "/tmp/vd/c"),
        (lambda: fs.remove("/tmp/vd", recursive=True), "/tmp/vd"),
    ])


def test_verbose_logs_stat_and_handles(verbose_sb: modal.Sandbox,
                                       caplog: pytest.LogCaptureFixture) -> None:
    check_one_line_each(verbose_sb, caplog, [
        (lambda: verbose_sb.filesystem.stat("/etc/hostname"), "/etc/hostname"),
        (lambda: verbose_sb.open("/tmp/h", "w").close(), "/tmp/h")])


# more hutch bugs (strict xfails) --------------------------------------------------------------
def test_proc_and_sys_are_refused_rather_than_showing_the_host(sb: modal.Sandbox) -> None:
    """procfs/sysfs answer with the reader's namespaces: the engine refuses them (an exec
    reads the sandbox's view)."""
    assert sh(sb, "cat /proc/sys/kernel/hostname") == f"{sb.object_id}\n"
    for path in ("/proc/sys/kernel/hostname", "/sys/kernel/mm/transparent_hugepage/enabled"):
        with pytest.raises(PermissionError, match="read them with exec"):
            sb.filesystem.read_text(path)


def in_fifo_open(pid: int) -> bool:
    """Whether a thread of the process waits in the kernel for a FIFO's other end."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):  # a thread that just ended
            if Path(f"/proc/{pid}/task/{task}/wchan").read_text() == "wait_for_partner":
                return True
    return False


def test_a_fifo_does_not_wedge_the_engine(sb: modal.Sandbox) -> None:
    sh(sb, "mkfifo -m 666 /tmp/fifo")
    engine = request_blocking("GET", "/v1/engine")["pid"]
    def read() -> None:
        with contextlib.suppress(exc.Error, OSError):  # what it gets once unblocked
            sb.filesystem.read_bytes("/tmp/fifo")
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: not reader.is_alive() or in_fifo_open(engine), what="the FIFO open")
        transport = httpx.HTTPTransport(uds=str(socket_path()))
        with httpx.Client(transport=transport, timeout=5) as raw:
            assert raw.get("http://hutch/v1/engine").status_code == 200
    finally:
        for name in filter(str.isdigit, os.listdir("/proc")):  # a writer wakes the reader
            with contextlib.suppress(OSError):
                if Path(f"/proc/{name}/root/etc/hostname").read_text() == f"{sb.object_id}\n":
                    os.close(os.open(f"/proc/{name}/root/tmp/fifo", os.O_WRONLY | os.O_NONBLOCK))
        reader.join(30)


def test_make_directory_through_symlinked_parents(sb: modal.Sandbox) -> None:
    sb.filesystem.make_directory("/bin/hutch-dir/sub")  # /bin -> usr/bin in Debian
    assert sh(sb, "test -d /usr/bin/hutch-dir/sub && echo ok") == "ok\n"


def test_failed_copy_to_local_keeps_the_local_file(sb: modal.Sandbox, tmp_path: Path) -> None:
    (tmp_path / "keep").write_text("precious")
    with pytest.raises(FileNotFoundError):
        sb.filesystem.copy_to_local("/tmp/missing", tmp_path / "keep")
    assert (tmp_path / "keep").read_text() == "precious"


# Modal's semantics: writes make their parents, downloads appear whole ------------------------
def test_writes_make_their_missing_parent_directories(sb: modal.Sandbox,
                                                      tmp_path: Path) -> None:
    fs = sb.filesystem
    fs.write_text("t", "/tmp/new/a/b/text.txt")
    fs.write_bytes(b"b", "deep/er/bytes.bin")  # (relative: under the workdir, /work)
    (tmp_path / "local").write_bytes(b"l")
    fs.copy_from_local(tmp_path / "local", "/srv/up/loaded")
    assert sh(sb, "cat /tmp/new/a/b/text.txt /work/deep/er/bytes.bin /srv/up/loaded; "
                  "stat -c '%a %U' /tmp/new/a /srv/up") == "tbl755 root\n755 root\n"
    with pytest.raises(exc.SandboxFilesystemNotADirectoryError):
        fs.write_text("x", "/tmp/new/a/b/text.txt/under-a-file")
    with pytest.raises(exc.SandboxFilesystemNotFoundError):
        sb.open("/tmp/not/there", "w")  # a handle, as Python's open(): no parents


def test_parents_through_hostile_symlinks_stay_in_the_sandbox(
        sb: modal.Sandbox, hostile: tuple[Path, bytes]) -> None:
    host, secret = hostile
    fs = sb.filesystem
    with pytest.raises(exc.SandboxFilesystemNotADirectoryError):
        fs.write_text("in", "/tmp/hostpath/sub/f")  # the host's dir has no twin inside
    sh(sb, f"mkdir -p {host}")
    fs.write_text("in", "/tmp/root/made-by-parents/f")
    fs.write_text("in", "/tmp/hostpath/sub/dir/f")
    fs.write_text("in", f"/../../..{host}/x/../y/f")
    for path in (f"/tmp/procroot{host}/p/f", f"/tmp/init{host}/p/f"):
        with pytest.raises(exc.SandboxFilesystemError):
            fs.write_text("evil", path)
    assert host_untouched(host, secret) and not Path("/made-by-parents").exists()
    assert sh(sb, f"cat /made-by-parents/f {host}/sub/dir/f {host}/y/f") == "ininin"


def test_copy_to_local_makes_local_parents_and_appears_whole(sb: modal.Sandbox,
                                                             tmp_path: Path) -> None:
    sb.filesystem.write_bytes(b"x" * 3_000_000, "/tmp/big")
    target = tmp_path / "made" / "for" / "it.bin"
    sb.filesystem.copy_to_local("/tmp/big", target)
    assert target.read_bytes() == b"x" * 3_000_000
    assert sorted(p.name for p in target.parent.iterdir()) == ["it.bin"]  # no partial left
    with pytest.raises(FileNotFoundError):
        sb.filesystem.copy_to_local("/tmp/missing", tmp_path / "other" / "x")
    assert not (tmp_path / "other").exists() or not list((tmp_path / "other").iterdir())


def test_stat_and_list_files_answer_modals_file_info(sb: modal.Sandbox) -> None:
    """Owners by the sandbox's own names (its /etc/passwd), links with their targets."""
    sh(sb, "mkdir -p /tmp/fi && echo hi > /tmp/fi/f && ln -s f /tmp/fi/l && "
           "echo 'bob:x:1000:1000::/:/bin/sh' >> /etc/passwd && chown 1000:0 /tmp/fi/f && "
           "chmod 640 /tmp/fi/f")
    fs = sb.filesystem
    info = fs.stat("/tmp/fi/f")
    assert (info.name, info.path, info.owner, info.group) == ("f", "/tmp/fi/f", "bob", "root")
    assert (info.mode, info.permissions, info.size) == (0o640, "-rw-r-----", 3)
    assert info.is_file() and not info.is_dir() and info.symlink_target is None
    listed = {e.name: e for e in fs.list_files("/tmp/fi")}
    link = listed["l"]
    assert link.is_symlink() and link.symlink_target == "f" and link.path == "/tmp/fi/l"
    assert link.permissions.startswith("l") and listed["f"] == info
    sh(sb, "chown 1001 /tmp/fi/f")  # an id the sandbox's passwd does not name
    assert fs.stat("/tmp/fi/f").owner == "1001"
    sh(sb, "rm /etc/passwd && mkfifo /etc/passwd")  # a trap where the names were
    assert fs.stat("/tmp/fi/f").owner == "1001"


def test_copy_to_local_keeps_what_the_local_name_means(sb: modal.Sandbox,
                                                       tmp_path: Path) -> None:
    """A private file stays private, a symlink is written through, a hard link stays
    one, a directory is refused before anything downloads."""
    sb.filesystem.write_bytes(b"from the sandbox", "/tmp/payload")
    private = tmp_path / "private"
    private.write_bytes(b"old")
    private.chmod(0o600)
    sb.filesystem.copy_to_local("/tmp/payload", private)
    assert private.read_bytes() == b"from the sandbox" and private.stat().st_mode & 0o777 == 0o600
    (tmp_path / "dotfiles").mkdir()
    (tmp_path / "dotfiles" / "config").write_bytes(b"old")
    (tmp_path / "config").symlink_to("dotfiles/config")
    sb.filesystem.copy_to_local("/tmp/payload", tmp_path / "config")
    assert (tmp_path / "config").is_symlink()
    assert (tmp_path / "dotfiles" / "config").read_bytes() == b"from the sandbox"
    (tmp_path / "h1").write_bytes(b"old")
    os.link(tmp_path / "h1", tmp_path / "h2")
    sb.filesystem.copy_to_local("/tmp/payload", tmp_path / "h2")
    assert (tmp_path / "h1").read_bytes() == b"from the sandbox"
    with pytest.raises(IsADirectoryError):
        sb.filesystem.copy_to_local("/tmp/payload", tmp_path / "dotfiles")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
