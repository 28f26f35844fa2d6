"""Images from elsewhere: a registry, an OCI layout directory or an OCI archive, via skopeo.

skopeo copies the image into a scratch OCI layout (converting Docker manifests to OCI);
its blobs then move into the store and each layer is unpacked once into its shared
directory, turning OCI whiteouts into what overlayfs reads: ``.wh.<name>`` becomes a 0:0
character device and ``.wh..wh..opq`` the ``user.overlay.opaque`` xattr.  Unpacking never
writes through a symlink (a hostile layer cannot reach outside its directory) and checks
each layer against the diff id its config promises.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from hutch.imagebuild.layertar import OPAQUE_MARKER, WHITEOUT_PREFIX

if TYPE_CHECKING:
    from hutch.imagebuild.layout import ImageStore

LogLine = Callable[[str], None]
LOCAL_REGISTRIES = ("localhost", "127.0.0.1", "[::1]")


class ImportFailed(RuntimeError):
    pass


def skopeo_source(kind: str, location: str) -> str:
    """The skopeo transport string for a registry reference, layout dir or archive."""
    if kind == "registry":
        return f"docker://{location}"
    if kind == "oci_layout":
        return f"oci:{location}"
    return f"oci-archive:{location}"


def import_image(store: ImageStore, source: str, ref: str, log_line: LogLine,
                 credentials: str | None = None) -> str:
    """Copy ``source`` (a skopeo transport string) into the store as ``ref``."""
    if shutil.which("skopeo") is None:
        raise ImportFailed("skopeo is not installed: apt-get install skopeo")
    work = Path(tempfile.mkdtemp(dir=store.tmp, prefix="import-"))
    try:
        argv = ["skopeo", "copy", "--remove-signatures", source, f"oci:{work}:image"]
        host = source.removeprefix("docker://").split("/", 1)[0].rsplit(":", 1)[0]
        if source.startswith("docker://") and host in LOCAL_REGISTRIES:
            argv.insert(2, "--src-tls-verify=false")
        if credentials:
            argv[2:2] = ["--src-creds", credentials]
        log_line(f"skopeo copy {source}")
        proc = subprocess.run(argv, capture_output=True, text=True)
        for line in (proc.stdout + proc.stderr).splitlines():
            log_line(line)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-10:])
            raise ImportFailed(f"skopeo could not copy {source}: {tail}")
        return _adopt(store, work, ref, log_line)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _adopt(store: ImageStore, layout: Path, ref: str, log_line: LogLine) -> str:
    index = json.loads((layout / "index.json").read_text())
    manifest_desc = index["manifests"][0]

    def blob(digest: str) -> Path:
        return layout / "blobs" / "sha256" / digest.split(":", 1)[1]

    manifest: dict[str, Any] = json.loads(blob(manifest_desc["digest"]).read_bytes())
    config: dict[str, Any] = json.loads(blob(manifest["config"]["digest"]).read_bytes())
    diff_ids: list[str] = config["rootfs"]["diff_ids"]
    for desc, diff_id in zip(manifest["layers"], diff_ids, strict=True):
        target = store.layers / diff_id.split(":", 1)[1]
        if not target.exists():
            log_line(f"unpacking layer {diff_id[:19]}")
            unpack_layer(blob(desc["digest"]), desc["mediaType"], diff_id, target, store.tmp)
    for digest in [manifest_desc["digest"], manifest["config"]["digest"],
                   *[d["digest"] for d in manifest["layers"]]]:
        dest = store.blob_path(digest)
        if not dest.exists():
            os.replace(blob(digest), dest)
    store.tag(ref, manifest_desc["digest"], manifest_desc["size"])
    return ref


class _Hashing:
    """A readable stream that hashes what is read through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha.update(data)
        return data


def _decompressed(path: Path, media_type: str) -> tuple[IO[bytes], subprocess.Popen[bytes] | None]:
    if media_type.endswith("+zstd"):
        proc = subprocess.Popen(["zstd", "-dc", str(path)], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        return proc.stdout, proc
    if media_type.endswith("+gzip") or media_type.endswith(".gzip"):
        return gzip.open(path, "rb"), None  # type: ignore[return-value]
    if media_type.endswith(".tar") or media_type.endswith("tar"):
        return open(path, "rb"), None
    raise ImportFailed(f"unsupported layer media type {media_type}")


def unpack_layer(blob: Path, media_type: str, diff_id: str, target: Path, tmp: Path) -> None:
    """Unpack one layer blob into ``target`` as an overlayfs lowerdir."""
    work = Path(tempfile.mkdtemp(dir=tmp, prefix="layer-"))
    stream, proc = _decompressed(blob, media_type)
    hashing = _Hashing(stream)
    try:
        with tarfile.open(fileobj=hashing, mode="r|") as tar:  # type: ignore[call-overload]
            extract_safely(tar, work, whiteouts=True)
        while hashing.read(1 << 20):  # the tar's padding counts for the diff id
            pass
        if proc is not None and proc.wait() != 0:
            raise ImportFailed(f"zstd failed on layer {diff_id}")
        if "sha256:" + hashing.sha.hexdigest() != diff_id:
            raise ImportFailed(f"layer content does not match its diff id {diff_id}")
        try:
            work.rename(target)
        except OSError:
            shutil.rmtree(work, ignore_errors=True)  # another import unpacked it first
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        stream.close()


def _inside(root: Path, name: str) -> tuple[Path, Path]:
    """``(parent dir, path)`` of a member, refusing absolute paths, ``..`` and any parent
    that is a symlink (which could lead the write out of ``root``)."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ImportFailed(f"layer entry {name!r} leaves the layer")
    parent = root
    for part in parts[:-1]:
        parent = parent / part
        try:
            st = os.lstat(parent)
        except FileNotFoundError:
            parent.mkdir(mode=0o755)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise ImportFailed(f"layer entry {name!r} goes through a non-directory")
    return parent, parent / parts[-1]


def extract_safely(tar: tarfile.TarFile, root: Path, *, whiteouts: bool) -> None:
    """Extract every member of ``tar`` under ``root`` without ever writing through a
    symlink or outside ``root``; ``whiteouts`` turns OCI whiteout entries into overlay ones
    (layers), else they are ordinary files (build contexts)."""
    for member in tar:
        _unpack_member(tar, member, root, whiteouts)


def _unpack_member(tar: tarfile.TarFile, member: tarfile.TarInfo, root: Path,
                   whiteouts: bool = True) -> None:
    parent, path = _inside(root, member.name)
    base = path.name
    if whiteouts and base == OPAQUE_MARKER:
        os.setxattr(parent, "user.overlay.opaque", b"y")
        return
    if whiteouts and base.startswith(WHITEOUT_PREFIX):
        hidden = parent / base[len(WHITEOUT_PREFIX):]
        if os.path.lexists(hidden):
            shutil.rmtree(hidden) if hidden.is_dir() and not hidden.is_symlink() \
                else hidden.unlink()
        os.mknod(hidden, stat.S_IFCHR | 0o600, os.makedev(0, 0))
        return
    if member.isdev() or member.isfifo():
        return  # device nodes come from the runtime's /dev, not from images
    if member.islnk():
        _, source = _inside(root, member.linkname)
        if os.path.lexists(path):
            path.unlink()
        os.link(source, path, follow_symlinks=False)
        return
    if os.path.lexists(path) and not (member.isdir() and path.is_dir()
                                       and not path.is_symlink()):
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    member.name = str(path.relative_to(root))
    tar.extract(member, root, set_attrs=True, numeric_owner=True)
