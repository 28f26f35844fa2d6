"""Paths from the API and from images against the host, from the attacker's side.

A client of the engine (an agent choosing paths, say) sends raw build requests; a hostile
image arrives as an OCI layout whose layer tars and config were crafted by hand.  Each
attack checks, measured rather than assumed:

1. no file appeared (or changed) on the host outside the engine's data directory;
2. the shared layer store is intact: its scratch directory is still a directory, holding
   nothing but a bystander (standing for another build in progress, untouched) since a
   failed import or build step leaves nothing behind; every layer of the default image
   still holds ``usr/bin/sleep``; a failed import added no layer (nor blob, nor tag);
3. an ordinary sandbox still starts within a deadline and runs ``sleep 0`` and ``echo``.

Before the fixes a copy step to ``/../../../x`` wrote on the host, a whiteout entry named
``.wh...`` emptied the store's scratch directory (other builds in progress included), a
diff id of ``sha256:../../..`` put a host directory under a sandbox as an image layer, and
a layout whose second layer was bad left its first layer unpacked in the store.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import shutil
import stat
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import hutch
from hutch.exception import Error
from hutch.sdk import syncbridge
from hutch.sdk.transport import client, request_blocking

T = TypeVar("T")
HOME = Path.home()
#: A create, an exec or a build answers within this many seconds (or the test fails).
DEADLINE = 120.0
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
#: Enough ``..`` to climb from any directory of the engine to ``/``.
UP = "/.." * 40


# calls with deadlines ----------------------------------------------------------------------
def _within(call: Callable[[], T], what: str, seconds: float = DEADLINE) -> T:
    """``call``'s result, run in a daemon thread; fails (and leaves the thread) if it has not
    answered within ``seconds``.  An exception it raised is re-raised here."""
    box: list[T | BaseException] = []

    def run() -> None:
        try:
            box.append(call())
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True, name=what)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise AssertionError(f"{what}: no answer within {seconds} s")
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def upload(data: bytes) -> str:
    """Upload a build context as any client could; returns its digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    request_blocking("PUT", f"/v1/images/contexts/{digest}", content=data)
    return digest


def build(base: dict[str, Any], steps: list[dict[str, Any]]) -> str:
    """``POST /v1/images/build`` with a raw body; the built ref, or the engine's error."""
    async def run() -> str:
        ref = None
        body = {"base": base, "steps": steps, "force_build": False}
        async for event in client().stream_events("/v1/images/build", method="POST",
                                                  json_body=body):
            if "ref" in event:
                ref = str(event["ref"])
        assert ref is not None, "the build ended without a ref or an error"
        return ref

    return _within(lambda: syncbridge.run_direct(run), "an image build")


def try_build(base: dict[str, Any], steps: list[dict[str, Any]]) -> str | Error:
    try:
        return build(base, steps)
    except Error as exc:
        return exc


def run_in(ref: str, script: str) -> tuple[int | None, str]:
    """Exit code and stdout of ``sh -c script`` in a new sandbox of ``ref``."""
    def go() -> tuple[int | None, str]:
        sb = hutch.Sandbox.create("sh", "-c", script, image=hutch.Image.from_id(ref),
                                  timeout=60)
        try:
            out = sb.stdout.read()
            sb.wait(raise_on_termination=False)
            return sb.returncode, out
        finally:
            sb.terminate(grace_period=0)

    return _within(go, f"a sandbox of {ref}")


# the checks after each attack ----------------------------------------------------------------
def ordinary_sandbox_works() -> None:
    """A default sandbox starts and runs ``sleep 0`` and ``echo`` within the deadline."""
    def go() -> None:
        sb = hutch.Sandbox.create(timeout=60)
        try:
            assert sb.exec("sleep", "0").wait() == 0
            p = sb.exec("echo", "still fine")
            assert (p.stdout.read(), p.wait()) == ("still fine\n", 0)
        finally:
            sb.terminate(grace_period=0)

    _within(go, "an ordinary sandbox")


@pytest.fixture
def store(engine: dict[str, Any]) -> Iterator[Path]:
    """The engine's data directory.  A bystander stands in the store's scratch directory
    for another build in progress (a hostile ``.wh...`` once emptied that directory; with
    a build's overlay mounted there, its layer would white out the whole image); after the
    test it must be untouched, nothing else may be left there, every layer of the default
    image must be whole and an ordinary sandbox must work."""
    data = Path(engine["data_dir"])
    tmp = data / "tmp"
    bystander = tmp / f"bystander-{uuid.uuid4().hex[:8]}"
    (bystander / "usr" / "bin").mkdir(parents=True)
    (bystander / "usr" / "bin" / "sleep").write_text("another build's file\n")
    try:
        yield data
        assert stat.S_ISDIR(os.lstat(tmp).st_mode), f"{tmp} is no longer a directory"
        assert (bystander / "usr" / "bin" / "sleep").read_text() == "another build's file\n"
        left = sorted(set(os.listdir(tmp)) - {bystander.name})
        assert not left, f"left behind in {tmp}: {left}"
        base, *more = default_layers(engine)  # the Debian tree, then its build steps
        assert (data / "layers" / base / "usr" / "bin" / "sleep").exists(), base
        for diff_id in more:
            assert (data / "layers" / diff_id).is_dir(), diff_id
        for name in os.listdir(data / "layers"):  # diff ids, and copies of local files
            digits = name.removeprefix("local-")
            assert len(digits) == (32 if name.startswith("local-") else 64) and all(
                c in "0123456789abcdef" for c in digits), name
        ordinary_sandbox_works()
    finally:
        shutil.rmtree(bystander, ignore_errors=True)


def default_layers(engine: dict[str, Any]) -> list[str]:
    doc = request_blocking("GET", "/v1/images/inspect", params={"ref": engine["default_image"]})
    return [d.split(":", 1)[1] for d in doc["config"]["rootfs"]["diff_ids"]]


@pytest.fixture
def marker() -> Iterator[str]:
    """A fresh name nothing on the host has; the test checks that no attack created it."""
    name = f"hutch-pwned-{uuid.uuid4().hex[:12]}"
    yield name
    for spot in landing_spots(name):
        if spot.is_dir() and not spot.is_symlink():
            shutil.rmtree(spot)
        elif os.path.lexists(spot):
            spot.unlink()


def landing_spots(name: str) -> list[Path]:
    return [HOME / name, HOME / ".cache" / name, HOME / ".local" / name,
            HOME / ".local" / "share" / name, Path("/tmp") / name]


def nothing_landed(name: str, data: Path) -> None:
    for spot in [*landing_spots(name), data / name, data.parent / name,
                 data / "tmp" / name, data / "layers" / name]:
        assert not os.path.lexists(spot), f"the attack wrote {spot} on the host"


# crafted tars and layouts ----------------------------------------------------------------------
Entry = tuple[str, str, bytes | str]


def make_tar(entries: list[Entry]) -> bytes:
    """(name, kind, data): kind is file, dir, symlink or hardlink (data: the target), chr or
    blk (a device node), or huge (a header promising 1 TiB, followed by 1 KiB)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            info.mode = 0o755 if kind == "dir" else 0o644
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind in ("symlink", "hardlink"):
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = str(data)
                tar.addfile(info)
            elif kind in ("chr", "blk"):
                info.type = tarfile.CHRTYPE if kind == "chr" else tarfile.BLKTYPE
                info.devmajor, info.devminor = 1, 1
                tar.addfile(info)
            elif kind == "huge":
                info.size = 1 << 40
                tar.fileobj.write(info.tobuf(tarfile.PAX_FORMAT))  # type: ignore[union-attr]
                tar.fileobj.write(b"\0" * 1024)  # type: ignore[union-attr]
                break  # the archive ends here, mid-file, as a hostile one may
            else:
                raw = data if isinstance(data, bytes) else data.encode()
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
    return out.getvalue()


def oci_layout(root: Path, layers: list[bytes], diff_ids: list[str] | None = None) -> Path:
    """An OCI image layout of uncompressed ``layers`` (``diff_ids``: what its config
    claims, the true ones by default)."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    descs = [{"mediaType": LAYER_TAR, **put(layer)} for layer in layers]
    true_ids = [f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in layers]
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Env": ["PATH=/usr/bin:/bin"], "Labels": {"nonce": uuid.uuid4().hex}},
              "rootfs": {"type": "layers", "diff_ids": diff_ids or true_ids}}
    cfg = put(json.dumps(config).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg},
                "layers": descs}
    man = put(json.dumps(manifest).encode())
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", **man}]}))
    os.chmod(root, 0o755)
    return root


def import_layout(layout: Path) -> str | Error:
    return try_build({"kind": "from_oci", "path": str(layout), "archive": False}, [])


def from_default(engine: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "from_id", "ref": engine["default_image"]}


# (a) copy destinations from the API -----------------------------------------------------------
@pytest.mark.parametrize("dest", [
    "/../../../{name}",
    UP + str(HOME) + "/{name}",
    "/srv/../../../../../../../../../../../../../../../../tmp/{name}",
    "//..//..//..//..//..//..//..//..//..//..//..//..//..//..//..//..//..//" + str(HOME)[1:]
    + "/{name}",
])
def test_copy_destination_cannot_leave_the_image(store: Path, engine: dict[str, Any],
                                                 marker: str, dest: str) -> None:
    dest = dest.format(name=marker)
    context = upload(make_tar([("f", "file", "copied\n")]))
    outcome = try_build(from_default(engine), [{"kind": "copy", "context": context,
                                                 "dest": dest}])
    nothing_landed(marker, store)
    if isinstance(outcome, str):  # resolved inside the image, as openat2 would
        inside = posixpath.normpath("/" + dest.lstrip("/"))
        while inside.startswith("/.."):
            inside = inside[3:] or "/"
        assert run_in(outcome, f"cat {inside}/f") == (0, "copied\n")


def test_copy_through_a_symlink_of_the_image_stays_inside(store: Path, engine: dict[str, Any],
                                                         marker: str) -> None:
    """An image whose ``/escape`` is a symlink to the user's home (and one climbing out
    with ``..``): a copy to ``/escape/...`` lands in the image's own ``/home``."""
    base = try_build(from_default(engine), [{"kind": "run", "commands": [
        f"mkdir -p {HOME} && ln -s {HOME} /escape && ln -s ../../../../../..{HOME} /climb"]}])
    assert isinstance(base, str), base
    context = upload(make_tar([("f", "file", "via link\n")]))
    for link in ("escape", "climb"):
        ref = try_build({"kind": "from_id", "ref": base},
                        [{"kind": "copy", "context": context, "dest": f"/{link}/{marker}"}])
        nothing_landed(marker, store)
        assert isinstance(ref, str), ref
        assert run_in(ref, f"cat {HOME}/{marker}/f; test -L /{link}") == (0, "via link\n")


# (a) crafted build contexts from the API ---------------------------------------------------------
SECRET_FILE = "hutch-secret-{name}"


@pytest.mark.parametrize("entries", [
    [("../../../../../../../../../../..{home}/{name}", "file", "x")],
    [("{home}/{name}", "file", "x")],
    [("l", "symlink", "{home}"), ("l/{name}", "file", "x")],
    [("l", "symlink", "../../../../../../../../../../../..{home}"), ("l/{name}", "file", "x")],
    [("d", "dir", b""), ("d/up", "symlink", ".."), ("d/up/../../../../../{name}", "file", "x")],
    [("h", "hardlink", "{home}/{secret}")],
    [("h", "hardlink", "../../../../../../../../../../..{home}/{secret}")],
    [("l", "symlink", "{home}"), ("h", "hardlink", "l/{secret}")],
    [("mem", "chr", b""), ("disk", "blk", b"")],
    [(".wh...", "file", "x"), ("{name}", "huge", b"")],
], ids=["dotdot", "absolute", "symlink-out", "symlink-climb", "symlink-up", "hardlink-abs",
        "hardlink-dotdot", "hardlink-via-symlink", "devices", "whiteout-and-huge"])
def test_crafted_context_stays_in_its_layer(store: Path, engine: dict[str, Any], marker: str,
                                            entries: list[Entry]) -> None:
    secret = HOME / SECRET_FILE.format(name=marker)
    secret.write_text("host secret\n")
    try:
        fill = {"home": str(HOME), "name": marker, "secret": secret.name}
        crafted = [(n.format(**fill), k, d.format(**fill) if isinstance(d, str) else d)
                   for n, k, d in entries]
        context = upload(make_tar(crafted))
        ref = try_build(from_default(engine), [{"kind": "copy", "context": context,
                                                "dest": "/app"}])
        nothing_landed(marker, store)
        assert secret.read_text() == "host secret\n" and secret.stat().st_nlink == 1
        if isinstance(ref, str):
            _, out = run_in(ref, "cat /app/h 2>/dev/null; find / -xdev \\( -type c -o "
                                    "-type b \\) -path '/app/*' 2>/dev/null; echo end")
            assert "host secret" not in out and out.endswith("end\n"), out
    finally:
        secret.unlink()


# (b) crafted layer tars and OCI layouts --------------------------------------------------
@pytest.mark.parametrize("entries", [
    [("a", "file", "a"), (".wh...", "file", b"")],
    [("a", "dir", b""), ("a/.wh...", "file", b""), ("b", "file", "b")],
    [("x/.wh.", "file", b"")],
    [("../../../../../../../../../../..{home}/{name}", "file", "x")],
    [("ok", "file", "fine"), ("{home}/{name}", "file", "x")],
    [("l", "symlink", "{home}"), ("l/{name}", "file", "x")],
    [("l", "symlink", "{home}"), ("l", "dir", b""), ("l/{name}", "file", "x")],
    [("d", "dir", b""), ("d/up", "symlink", ".."), ("d/up/../../../../../{name}", "file", "x")],
    [("h", "hardlink", "{home}/{secret}")],
    [("h", "hardlink", "../../../../../../../../../../..{home}/{secret}")],
    [("mem", "chr", b""), ("disk", "blk", b""), ("ok", "file", "fine")],
    [("ok", "file", "fine"), ("{name}", "huge", b"")],
], ids=["whiteout-dotdot", "whiteout-dotdot-below", "whiteout-empty", "dotdot", "absolute",
        "symlink-out", "symlink-then-dir", "symlink-up", "hardlink-abs", "hardlink-dotdot",
        "devices", "huge"])
def test_crafted_layer_cannot_leave_it_or_break_the_store(
        store: Path, marker: str, tmp_path: Path, entries: list[Entry]) -> None:
    secret = HOME / SECRET_FILE.format(name=marker)
    secret.write_text("host secret\n")
    try:
        fill = {"home": str(HOME), "name": marker, "secret": secret.name}
        crafted = [(n.format(**fill), k, d.format(**fill) if isinstance(d, str) else d)
                   for n, k, d in entries]
        layers_before = set(os.listdir(store / "layers"))
        ref = import_layout(oci_layout(tmp_path / "layout", [make_tar(crafted)]))
        nothing_landed(marker, store)
        assert secret.read_text() == "host secret\n" and secret.stat().st_nlink == 1
        if isinstance(ref, Error):
            assert set(os.listdir(store / "layers")) == layers_before, "a failed import " \
                "left a layer behind"
            return
        layer = [d for d in os.listdir(store / "layers") if d not in layers_before]
        for name in layer:
            for path, dirs, files in os.walk(store / "layers" / name):
                for f in [*dirs, *files]:
                    st = os.lstat(os.path.join(path, f))
                    assert not stat.S_ISBLK(st.st_mode), f"a block device in {path}/{f}"
                    assert not (stat.S_ISCHR(st.st_mode) and st.st_rdev != 0), \
                        f"a device node in {path}/{f}"
                    if stat.S_ISREG(st.st_mode):
                        assert st.st_ino != secret.stat().st_ino, "a host file linked in"
    finally:
        secret.unlink()


def test_diff_id_naming_a_host_directory_is_refused(store: Path, marker: str,
                                                   tmp_path: Path) -> None:
    """A config whose diff id climbs out of the layer store must not make a host directory
    (here the user's home) a layer of a sandbox."""
    (HOME / marker).write_text("the user's file\n")
    try:
        climb = "sha256:" + "../" * 12 + str(HOME).lstrip("/")
        ref = import_layout(oci_layout(tmp_path / "layout", [make_tar([("a", "file", "a")])],
                                       diff_ids=[climb]))
        # Before the fix it was imported, and a sandbox of it had the user's home as its
        # root file system (its create failed only for want of a shell there).
        assert isinstance(ref, Error), f"imported as {ref}"
        assert "diff id" in str(ref), ref
    finally:
        (HOME / marker).unlink()


def test_failed_import_leaves_no_layer_behind(store: Path, marker: str, tmp_path: Path) -> None:
    """The first layer unpacks, the second is hostile: neither stays in the store."""
    good = make_tar([("usr", "dir", b""), ("usr/unique", "file", uuid.uuid4().hex)])
    climb = f"../../../../../../../../..{HOME}/{marker}"
    bad = make_tar([("ok", "file", "x"), (climb, "file", "x")])
    layout = oci_layout(tmp_path / "layout", [good, bad])
    ref = import_layout(layout)
    assert isinstance(ref, Error), f"imported as {ref}"
    nothing_landed(marker, store)
    good_id = hashlib.sha256(good).hexdigest()
    assert not (store / "layers" / good_id).exists(), "the import left its first layer"
    for blob in (layout / "blobs" / "sha256").iterdir():
        assert not (store / "oci" / "blobs" / "sha256" / blob.name).exists(), blob.name


def test_an_image_that_cannot_start_fails_its_create(store: Path, tmp_path: Path) -> None:
    """An image with no ``sleep`` (and so no default entrypoint): the create fails with a
    clear error within its deadline, and the sandbox is never left listed as creating."""
    ref = import_layout(oci_layout(tmp_path / "layout", [make_tar([("etc", "dir", b"")])]))
    assert isinstance(ref, str), ref
    app = f"paths-{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    with pytest.raises(Error) as caught:
        _within(lambda: hutch.Sandbox.create(image=hutch.Image.from_id(ref), timeout=60,
                                             app=hutch.App.lookup(app, create_if_missing=True)),
                "creating a sandbox that cannot start", 30)
    assert time.monotonic() - start < 30
    assert "sleep" in str(caught.value) or "start" in str(caught.value), caught.value
    listed = request_blocking("GET", "/v1/sandboxes")
    states = [s["state"] for s in listed.get("sandboxes", []) if s["image"] == ref]
    assert "creating" not in states and "running" not in states, states
