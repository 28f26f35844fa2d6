"""Volumes against the real engine: Modal's guide examples F4/F5, persistence across
sandboxes and engine restarts, live sharing, read-only and ``sub_path`` mounts, deletion,
the file calls, and the confinement of those calls to the volume's own directory.

Every test works in a new app and new volumes (uuid names); the fixtures terminate the
app's sandboxes and then delete the volumes, whatever the test did.
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import hutch as modal
from hutch.exception import ConflictError, InvalidError, NotFoundError
from hutch.sdk.transport import request_blocking
from tests.helpers import kill_daemon, stop_engine


def _name() -> str:
    return f"vol-{uuid.uuid4().hex[:12]}"


def run(sb: modal.Sandbox, script: str) -> tuple[int, str]:
    """Run ``sh -c script`` in the sandbox: (exit code, stdout + stderr)."""
    p = sb.exec("sh", "-c", f"({script}) 2>&1", timeout=30)
    out = p.stdout.read()
    return p.wait(), out


def ok(sb: modal.Sandbox, script: str) -> str:
    code, out = run(sb, script)
    assert code == 0, (script, out)
    return out


def _terminate_all(app: modal.App) -> None:
    for sb in modal.Sandbox.list(app_id=app.app_id):
        sb.terminate(wait=True)


@pytest.fixture
def app(engine: dict[str, Any]) -> Iterator[modal.App]:
    app = modal.App.lookup(f"vols-{uuid.uuid4().hex[:8]}", create_if_missing=True)
    yield app
    _terminate_all(app)


@pytest.fixture
def new_volume(app: modal.App) -> Iterator[Callable[[], modal.Volume]]:
    """Makes volumes, deleted after the app's sandboxes are terminated."""
    names: list[str] = []

    def make() -> modal.Volume:
        names.append(_name())
        return modal.Volume.from_name(names[-1], create_if_missing=True).hydrate()

    yield make
    _terminate_all(app)
    for name in names:
        with contextlib.suppress(NotFoundError):
            modal.Volume.delete(name)


@pytest.fixture
def vol(new_volume: Callable[[], modal.Volume]) -> modal.Volume:
    return new_volume()


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A host directory, with a file, that no sandbox or volume call may reach."""
    (tmp_path / "host").mkdir()
    (tmp_path / "host" / "secret").write_text("host-secret\n")
    return tmp_path / "host"


def box(app: modal.App, volumes: Mapping[str | os.PathLike[str], modal.Volume]) -> modal.Sandbox:
    return modal.Sandbox.create(app=app, volumes=volumes, timeout=120)


def read(vol: modal.Volume, path: str) -> bytes:
    return b"".join(vol.read_file(path))


def upload(vol: modal.Volume, tmp_path: Path, files: dict[str, bytes]) -> None:
    with vol.batch_upload(force=True) as batch:
        for remote, data in files.items():
            local = tmp_path / f"up-{uuid.uuid4().hex}"
            local.write_bytes(data)
            batch.put_file(local, remote)


# Modal's guide -----------------------------------------------------------------------------
def test_f4_write_in_a_sandbox_read_from_the_volume(app: modal.App, vol: modal.Volume) -> None:
    vol = modal.Volume.from_name(vol.name, create_if_missing=True)
    sb = modal.Sandbox.create(app=app, volumes={"/cache": vol})
    p = sb.exec("sh", "-c", "echo foo > /cache/a.txt")
    assert p.wait() == 0
    sb.terminate(wait=True)
    assert b"".join(vol.read_file("a.txt")) == b"foo\n"


def test_f5_sub_path_shows_only_that_directory(app: modal.App, vol: modal.Volume,
                                               tmp_path: Path) -> None:
    upload(vol, tmp_path, {"top.txt": b"top\n", "users/other/o.txt": b"other\n"})
    sb = box(app, {"/data": vol.with_mount_options(sub_path="/users/user_123")})
    assert ok(sb, "ls -A /data") == ""
    ok(sb, "echo mine > /data/m.txt && mkdir /data/d && echo in > /data/d/i.txt")
    paths = {e.path.lstrip("/") for e in vol.listdir("/users/user_123", recursive=True)}
    assert paths == {"users/user_123/m.txt", "users/user_123/d", "users/user_123/d/i.txt"}
    assert read(vol, "/users/user_123/d/i.txt") == b"in\n"
    assert {e.path.lstrip("/") for e in vol.listdir("/")} == {"top.txt", "users"}


# lookup, lifetime, persistence -------------------------------------------------------------
def test_from_name_unknown_and_bad_names(engine: dict[str, Any]) -> None:
    unknown = modal.Volume.from_name(_name())  # lazy, as Modal's: nothing asked yet
    assert unknown.object_id is None
    for use in (unknown.hydrate, lambda: unknown.listdir("/"), unknown.info):
        with pytest.raises(NotFoundError):
            use()
    with pytest.raises(NotFoundError):
        modal.Sandbox.create(volumes={"/v": unknown}, timeout=10)
    declared = modal.Volume.from_name(_name(), create_if_missing=True)
    try:
        assert declared.listdir("/") == [] and declared.object_id is not None  # made at use
    finally:
        modal.Volume.delete(declared.name)
    for bad in ["has space", "a/b", "x" * 65, "", "../up"]:
        with pytest.raises(InvalidError):
            modal.Volume.from_name(bad, create_if_missing=True)
    with pytest.raises(InvalidError):  # the engine checks names too
        request_blocking("POST", "/v1/volumes/lookup",
                         json_body={"name": "a/b", "create_if_missing": True})




def test_contents_persist_across_sandboxes_and_engine_restarts(app: modal.App,
                                                               vol: modal.Volume) -> None:
    first = box(app, {"/v": vol})
    ok(first, "mkdir -p /v/d && echo one > /v/d/f.txt")
    first.terminate(wait=True)
    second = box(app, {"/mnt/other": vol})
    assert ok(second, "cat /mnt/other/d/f.txt") == "one\n"
    ok(second, "echo two >> /mnt/other/d/f.txt")

    stop_engine()  # terminates `second`; the next call starts a new engine
    assert modal.Volume.from_name(vol.name).hydrate().object_id == vol.object_id
    third = box(app, {"/v": vol})
    assert ok(third, "cat /v/d/f.txt") == "one\ntwo\n"
    ok(third, "echo three >> /v/d/f.txt")

    old = kill_daemon()  # `third` survives, adopted by the next daemon
    assert read(vol, "d/f.txt") == b"one\ntwo\nthree\n"
    assert request_blocking("GET", "/v1/engine")["pid"] != old
    fourth = box(app, {"/v": vol})
    ok(fourth, "echo four >> /v/d/f.txt")
    assert ok(third, "cat /v/d/f.txt") == "one\ntwo\nthree\nfour\n"
    with pytest.raises(ConflictError) as err:  # the adopted sandbox still counts as a user
        modal.Volume.delete(vol.name)
    assert third.object_id in str(err.value)


def test_two_sandboxes_see_each_others_writes_at_once(app: modal.App, vol: modal.Volume) -> None:
    a = box(app, {"/a": vol})
    b = box(app, {"/b": vol})
    ok(a, "echo from-a > /a/x")
    assert ok(b, "cat /b/x") == "from-a\n"
    ok(b, "echo from-b > /b/y && rm /b/x")
    assert ok(a, "cat /a/y; ls /a") == "from-b\ny\n"
    vol.commit()
    vol.reload()
    assert read(vol, "y") == b"from-b\n"


def test_read_only_mount(app: modal.App, vol: modal.Volume, tmp_path: Path) -> None:
    upload(vol, tmp_path, {"f.txt": b"kept\n"})
    sb = box(app, {"/ro": vol.with_mount_options(read_only=True), "/rw": vol})
    assert ok(sb, "cat /ro/f.txt") == "kept\n"
    for script in ["echo x > /ro/new", "echo x >> /ro/f.txt", "rm /ro/f.txt", "mkdir /ro/d",
                   "touch /ro/f.txt", "mount -o remount,rw /ro && echo x > /ro/new",
                   "unshare -Urm sh -c 'mount -o remount,rw,bind /ro && echo x > /ro/new'"]:
        code, out = run(sb, script)
        assert code != 0, (script, out)
    ok(sb, "echo rw > /rw/w.txt")  # the same volume mounted read-write beside it
    assert ok(sb, "cat /ro/w.txt") == "rw\n"
    assert {e.path.lstrip("/") for e in vol.listdir("/")} == {"f.txt", "w.txt"}
    assert read(vol, "f.txt") == b"kept\n"


def test_delete_refused_while_mounted(app: modal.App,
                                      new_volume: Callable[[], modal.Volume]) -> None:
    vol = new_volume()  # the fixture also deletes the volume re-created at the end
    sb = box(app, {"/v": vol})
    ok(sb, "echo old > /v/f")
    with pytest.raises(ConflictError) as err:
        modal.Volume.delete(vol.name)
    assert sb.object_id in str(err.value)
    assert ok(sb, "cat /v/f") == "old\n"
    sb.terminate(wait=True)
    modal.Volume.delete(vol.name)
    calls: list[Callable[[], object]] = [lambda: modal.Volume.from_name(vol.name).hydrate(),
                                         vol.commit,
                                         lambda: modal.Volume.delete(vol.name)]
    for call in calls:
        with pytest.raises(NotFoundError):
            call()
    again = modal.Volume.from_name(vol.name, create_if_missing=True).hydrate()
    assert again.object_id not in (None, vol.object_id)
    assert again.listdir("/") == []
    with pytest.raises(FileNotFoundError):
        read(again, "f")


def test_ephemeral(app: modal.App) -> None:
    with modal.Volume.ephemeral() as vol:
        sb = box(app, {"/e": vol})
        ok(sb, "echo eph > /e/f")
        assert read(vol, "f") == b"eph\n"
        sb.terminate(wait=True)
    with pytest.raises(NotFoundError):
        modal.Volume.from_name(vol.name).hydrate()


# file calls --------------------------------------------------------------------------------
def test_listdir_read_file_and_read_file_into_fileobj(vol: modal.Volume, tmp_path: Path) -> None:
    upload(vol, tmp_path, {"a.txt": b"abc", "d/b.txt": b"hello", "d/e/c.txt": b"x" * 70000})
    top = {e.path.lstrip("/"): (e.type.name.lower(), e.size) for e in vol.listdir("/")}
    assert top.keys() == {"a.txt", "d"}
    assert top["a.txt"] == ("file", 3) and top["d"][0] == "directory"
    every = vol.listdir("/", recursive=True)
    assert [e.path.lstrip("/") for e in every] == ["a.txt", "d", "d/b.txt", "d/e", "d/e/c.txt"]
    sizes = {e.path.lstrip("/"): e.size for e in every if e.type.name == "FILE"}
    assert {int(e.type) for e in every} == {1, 2}  # Modal's FileEntryType: FILE, DIRECTORY
    assert sizes == {"a.txt": 3, "d/b.txt": 5, "d/e/c.txt": 70000}
    assert all(e.mtime > 0 for e in every)
    assert [e.path.lstrip("/") for e in vol.listdir("/d")] == ["d/b.txt", "d/e"]
    assert read(vol, "/d/e/c.txt") == b"x" * 70000
    with pytest.raises(FileNotFoundError):
        read(vol, "missing.txt")
    with pytest.raises(FileNotFoundError):
        vol.listdir("/nope")
    data = os.urandom(3 * 1024 * 1024 + 17)  # several chunks
    upload(vol, tmp_path, {"big.bin": data})
    buf = io.BytesIO()
    assert vol.read_file_into_fileobj("big.bin", buf) == len(data)
    assert buf.getvalue() == data
    with pytest.raises(FileNotFoundError):
        vol.read_file_into_fileobj("nope.bin", io.BytesIO())
    with pytest.raises(IsADirectoryError):
        read(vol, "d")


def test_remove_file(vol: modal.Volume, tmp_path: Path) -> None:
    upload(vol, tmp_path, {"f": b"1", "d/g": b"2", "d/h/i": b"3"})
    vol.remove_file("f")
    with pytest.raises(modal.exception.SandboxFilesystemDirectoryNotEmptyError):
        vol.remove_file("d")
    assert {e.path.lstrip("/") for e in vol.listdir("/", recursive=True)} == {
        "d", "d/g", "d/h", "d/h/i"}
    vol.remove_file("d", recursive=True)
    assert vol.listdir("/") == []
    with pytest.raises(FileNotFoundError):
        vol.remove_file("f")


def test_copy_files(app: modal.App, vol: modal.Volume, tmp_path: Path) -> None:
    upload(vol, tmp_path, {"a.txt": b"A", "b.txt": b"B", "sub/c.txt": b"C"})
    vol.copy_files(["a.txt"], "a-copy.txt")
    assert read(vol, "a-copy.txt") == b"A" and read(vol, "a.txt") == b"A"
    sb = box(app, {"/v": vol})
    ok(sb, "mkdir /v/into")
    vol.copy_files(["a.txt", "b.txt", "sub/c.txt"], "into")
    assert ok(sb, "cd /v/into && ls && cat a.txt b.txt c.txt") == "a.txt\nb.txt\nc.txt\nABC"
    with pytest.raises(FileNotFoundError):
        vol.copy_files(["missing.txt"], "x.txt")


def _tree(tmp_path: Path) -> tuple[Path, Path]:
    """A local executable script and a directory with a 0600 file."""
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o755)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "top.txt").write_text("top\n")
    (tree / "sub" / "secret").write_text("s\n")
    (tree / "sub" / "secret").chmod(0o600)
    return script, tree


def test_batch_upload_files_directories_and_force(app: modal.App, vol: modal.Volume,
                                                  tmp_path: Path) -> None:
    script, tree = _tree(tmp_path)
    with vol.batch_upload() as batch:
        batch.put_file(script, "/bin/run.sh")
        batch.put_directory(tree, "/tree")
    sb = box(app, {"/v": vol})
    assert ok(sb, "/v/bin/run.sh") == "ran\n"
    assert ok(sb, "cat /v/tree/top.txt /v/tree/sub/secret") == "top\ns\n"
    (tmp_path / "new.txt").write_text("new\n")
    (tmp_path / "other.txt").write_text("other\n")
    with pytest.raises(FileExistsError), vol.batch_upload() as batch:
        batch.put_file(tmp_path / "new.txt", "/fresh.txt")
        batch.put_file(tmp_path / "other.txt", "tree/top.txt")
    assert ok(sb, "ls /v; cat /v/tree/top.txt") == "bin\ntree\ntop\n"  # nothing uploaded
    with vol.batch_upload(force=True) as batch:
        batch.put_file(tmp_path / "new.txt", "/fresh.txt")
        batch.put_file(tmp_path / "other.txt", "tree/top.txt")
    assert ok(sb, "cat /v/fresh.txt /v/tree/top.txt") == "new\nother\n"


def test_uploaded_modes_are_kept(app: modal.App, vol: modal.Volume, tmp_path: Path) -> None:
    script, tree = _tree(tmp_path)
    with vol.batch_upload() as batch:
        batch.put_file(script, "/bin/run.sh")
        batch.put_directory(tree, "/tree")
    vol.copy_files(["/bin/run.sh"], "/run-copy.sh")
    sb = box(app, {"/v": vol})
    # Files keep their local modes (copies their source's); directories are 0755.
    assert ok(sb, "cd /v && stat -c '%a %n' . bin tree/sub bin/run.sh run-copy.sh "
                  "tree/top.txt tree/sub/secret") == (
        "755 .\n755 bin\n755 tree/sub\n755 bin/run.sh\n755 run-copy.sh\n644 tree/top.txt\n"
        "600 tree/sub/secret\n")


# confinement -------------------------------------------------------------------------------
def test_planted_symlinks_never_reach_host_files(app: modal.App, vol: modal.Volume,
                                                 tmp_path: Path, host: Path) -> None:
    host_hostname = Path("/etc/hostname").read_bytes()
    upload(vol, tmp_path, {"a.txt": b"mine\n"})
    sb = box(app, {"/cache": vol})
    ok(sb, f"ln -s / /cache/root && ln -s /etc /cache/etc && ln -s {host} /cache/out && "
           f"ln -s {host}/secret /cache/secretlink && ln -s ../../../../../.. /cache/up")

    def refused_or_not(call: Callable[[], bytes], host_content: bytes) -> None:
        try:
            got = call()
        except (OSError, modal.exception.Error):
            return
        assert got != host_content

    def into_fileobj(path: str) -> bytes:
        buf = io.BytesIO()
        vol.read_file_into_fileobj(path, buf)
        return buf.getvalue()

    def copied(path: str) -> bytes:
        vol.copy_files([path], "copied")
        return read(vol, "copied")

    for path in ["root/etc/hostname", "etc/hostname", "up/etc/hostname"]:
        refused_or_not(partial(read, vol, path), host_hostname)
    for path in ["out/secret", "secretlink", f"up{host}/secret", f"root{host}/secret"]:
        refused_or_not(partial(read, vol, path), b"host-secret\n")
        refused_or_not(partial(into_fileobj, path), b"host-secret\n")
        refused_or_not(partial(copied, path), b"host-secret\n")
        with contextlib.suppress(OSError, modal.exception.Error):
            vol.remove_file("copied")

    for path in ["out", "root/etc", f"up{host}", f"root{host}"]:
        try:
            names = {e.path.rsplit("/", 1)[-1] for e in vol.listdir(path)}
        except (OSError, modal.exception.Error):
            continue
        assert "secret" not in names and "passwd" not in names, (path, names)
    every = {e.path.lstrip("/"): e.type.name.lower() for e in vol.listdir("/", recursive=True)}
    assert every == {"a.txt": "file", "root": "symlink", "etc": "symlink", "out": "symlink",
                     "secretlink": "symlink", "up": "symlink"}

    attempts: list[Callable[[], None]] = [
        lambda: vol.copy_files(["a.txt"], "out/copied"),
        lambda: vol.copy_files(["a.txt"], "out/"),
        lambda: vol.copy_files(["a.txt", "a.txt"], f"root{host}"),
        lambda: vol.copy_files(["a.txt"], f"up{host}/copied"),
        lambda: vol.copy_files(["a.txt"], "secretlink"),
        lambda: upload(vol, tmp_path, {"out/put": b"x", f"root{host}/put2": b"x",
                                       f"up{host}/put3": b"x"}),
        lambda: upload(vol, tmp_path, {"secretlink": b"overwritten\n"}),
        lambda: vol.remove_file("out/secret"),
        lambda: vol.remove_file(f"root{host}/secret"),
        lambda: vol.remove_file(f"up{host}", recursive=True),
    ]
    for attempt in attempts:
        with contextlib.suppress(OSError, modal.exception.Error):
            attempt()
    assert sorted(p.name for p in host.iterdir()) == ["secret"]
    assert (host / "secret").read_text() == "host-secret\n"
    # What a sandbox sees through its links is its own filesystem, not the host's.
    assert ok(sb, "cat /cache/root/etc/hostname") == f"{sb.object_id}\n"


def test_sub_path_through_a_planted_symlink_stays_in_the_volume(
        app: modal.App, vol: modal.Volume, host: Path) -> None:
    sb = box(app, {"/cache": vol})
    ok(sb, f"ln -s {host} /cache/esc && mkdir /cache/real && ln -s {host} /cache/real/deeper")
    for sub in ["/esc", "/real/deeper", "/real/deeper/more"]:
        try:
            other = box(app, {"/data": vol.with_mount_options(sub_path=sub)})
        except modal.exception.Error:
            continue
        _, out = run(other, "cat /data/secret; echo x > /data/planted")
        assert "host-secret" not in out, (sub, out)
        other.terminate(wait=True)
    assert sorted(p.name for p in host.iterdir()) == ["secret"]


def test_bad_volume_mounts_are_invalid(app: modal.App, vol: modal.Volume) -> None:
    for path in ["relative/path", "/", "", "/a/../b"]:
        with pytest.raises(InvalidError):
            box(app, {path: vol})
    with pytest.raises(InvalidError):
        box(app, {"/v": "not-a-volume"})  # type: ignore[dict-item]
    with pytest.raises(InvalidError):
        vol.with_mount_options(sub_path="../outside")
    with pytest.raises(NotFoundError):
        box(app, {"/v": modal.Volume(_name(), "vo-unknown")})
    assert list(modal.Sandbox.list(app_id=app.app_id)) == []


# Modal's volume API -----------------------------------------------------------------------
def test_objects_create_list_delete(engine: dict[str, Any]) -> None:
    first, second = _name(), _name()
    modal.Volume.objects.create(first)
    with pytest.raises(modal.exception.AlreadyExistsError):
        modal.Volume.objects.create(first)
    modal.Volume.objects.create(first, allow_existing=True)
    modal.Volume.objects.create(second)
    try:
        names = [v.name for v in modal.Volume.objects.list()]
        assert names.index(second) < names.index(first)  # newest first
        made = modal.Volume.from_name(first).hydrate()
        assert modal.Volume.from_id(made.object_id).name == first
        assert made.info().name == first and made.info().created_at.tzinfo is not None
        with pytest.raises(NotFoundError):
            modal.Volume.from_id("vo-" + "x" * 22)
    finally:
        modal.Volume.objects.delete(first)
        modal.Volume.objects.delete(second)
    modal.Volume.objects.delete(first, allow_missing=True)
    with pytest.raises(NotFoundError):
        modal.Volume.objects.delete(first)


def test_rename_keeps_the_files_and_waits_for_its_sandboxes(
        app: modal.App, new_volume: Callable[[], modal.Volume]) -> None:
    vol = new_volume()
    taken = new_volume()
    with vol.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"kept"), "/f", mode=0o600)
    sb = modal.Sandbox.create(app=app, volumes={"/data": vol})
    with pytest.raises(ConflictError, match="in use"):
        modal.Volume.rename(vol.name, _name())
    sb.terminate(wait=True)
    with pytest.raises(modal.exception.AlreadyExistsError):
        modal.Volume.rename(vol.name, taken.name)
    new = _name()
    modal.Volume.rename(vol.name, new)
    try:
        renamed = modal.Volume.from_name(new).hydrate()
        assert renamed.object_id == vol.object_id
        assert b"".join(renamed.read_file("/f")) == b"kept"
        assert [e.path for e in renamed.iterdir("/")] == [e.path for e in renamed.listdir("/")]
        assert [e.path.lstrip("/") for e in renamed.iterdir("/")] == ["f"]
        with pytest.raises(NotFoundError):
            modal.Volume.from_name(vol.name).hydrate()
    finally:
        modal.Volume.delete(new)


def test_read_only_and_async_batches(app: modal.App, vol: modal.Volume) -> None:
    async def upload() -> None:
        async with vol.batch_upload.aio() as batch:
            batch.put_file(io.BytesIO(b"x" * 3_000_000), "/big/file.bin")

    import anyio

    anyio.run(upload)
    sb = modal.Sandbox.create(app=app, volumes={"/ro": vol.read_only()})
    assert ok(sb, "wc -c < /ro/big/file.bin").strip() == "3000000"
    code, out = run(sb, "touch /ro/new")
    assert code != 0 and "Read-only file system" in out
    sb.reload_volumes()  # (nothing to fetch: the same directory everywhere)
    sb.terminate(wait=True)
    with pytest.raises(ConflictError):
        sb.reload_volumes()
