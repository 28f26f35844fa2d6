"""Python interpreters Debian does not package, from python-build-standalone.

Debian ships one CPython per suite (bookworm 3.11, trixie 3.13, forky 3.14).  The other
versions ``Image.debian_slim(python_version=...)`` and ``from_registry(add_python=...)``
take come from python-build-standalone, the relocatable builds ``uv python install`` and
Modal use: its ``install_only`` archive (``python/bin``, ``python/lib``, ...) becomes one
layer at ``/usr/local``, as Modal's ``COPY /python/. /usr/local``.

Where an archive comes from, in order:

1. a directory of archives the user provides: ``<data>/pythons/`` (the engine's data
   directory, ``~/.local/share/hutch/pythons``) and those in ``HUTCH_PYTHON_ARCHIVES``
   (``:``-separated); any ``cpython-X.Y.Z[+RELEASE]-<arch>-unknown-linux-gnu-install_only``
   ``.tar.gz`` there serves ``X.Y`` (the newest patch level wins) and ``X.Y.Z``.  This is
   the offline path: copy the file there from any machine that can download it.
2. a download of the release pinned in :data:`RELEASES` from ``HUTCH_PYTHON_MIRROR``
   (default: the project's GitHub releases; a mirror laid out like it, as uv's
   ``UV_PYTHON_INSTALL_MIRROR``, or a ``file://`` directory), checked against the release's
   ``SHA256SUMS`` and kept in ``<data>/pythons/`` so it is downloaded once.

Nothing from the archive runs on the host: the interpreter is first run inside the build
container that checks its version (:mod:`hutch.engine.images.bases`).
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hutch.imagebuild import inroot

#: Python series -> (release, full version) downloaded when the user provides no archive;
#: the releases Modal's client 1.6 pins for its own ``add_python`` (3.10: its last one).
RELEASES: dict[str, tuple[str, str]] = {
    "3.10": ("20230826", "3.10.13"),
    "3.11": ("20261021", "3.11.17"),
    "3.12": ("20261021", "3.12.15"),
    "3.13": ("20261021", "3.13.17"),
    "3.14": ("20261021", "3.14.9"),
}
DEFAULT_MIRROR = "https://github.com/astral-sh/python-build-standalone/releases/download"
ARCHIVES_ENV = "HUTCH_PYTHON_ARCHIVES"
MIRROR_ENV = "HUTCH_PYTHON_MIRROR"
#: A downloaded archive larger than this is refused (3.14's is about 35 MB).
MAX_ARCHIVE = 512 << 20
VERSION = re.compile(r"3\.(\d{1,2})(?:\.(\d{1,2}))?")
_ARCHIVE = re.compile(r"cpython-(3\.\d{1,2}\.\d{1,2})(?:\+[0-9A-Za-z.]+)?-(.+?)"
                      r"-install_only(?:_stripped)?\.tar\.gz")


class PythonUnavailable(RuntimeError):
    """No archive for the version: the message says what to download and where to put it."""


@dataclass(frozen=True)
class Archive:
    path: Path
    version: str  # X.Y.Z
    sha256: str


def triple() -> str:
    machine = platform.machine()
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    return f"{arch}-unknown-linux-gnu"


def series_of(version: str) -> str:
    match = VERSION.fullmatch(version)
    if match is None:
        raise PythonUnavailable(f"{version!r} is not a Python version such as 3.12 or 3.12.7")
    return f"3.{match.group(1)}"


def archive_name(series: str) -> str:
    release, full = RELEASES[series]
    return f"cpython-{full}+{release}-{triple()}-install_only.tar.gz"


def archive_dirs(data_dir: Path) -> list[Path]:
    extra = [Path(p) for p in os.environ.get(ARCHIVES_ENV, "").split(":") if p]
    return [data_dir / "pythons", *extra]


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def find_local(version: str, dirs: list[Path]) -> Path | None:
    """The best archive for ``version`` (``X.Y``: the newest patch; ``X.Y.Z``: exactly)."""
    best: tuple[tuple[int, ...], Path] | None = None
    for directory in dirs:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            match = _ARCHIVE.fullmatch(name)
            if match is None or match.group(2) != triple():
                continue
            full = match.group(1)
            if full != version and series_of(full) != version:
                continue
            if (directory / name).is_file() and (best is None or _key(full) > best[0]):
                best = (_key(full), directory / name)
    return None if best is None else best[1]


#: (path, size, mtime_ns) -> sha256: an archive is hashed once, not at every build
_HASHES: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = _hash_file(path)
    return _HASHES[key]


def _hash_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def _read_url(url: str, limit: int, into: Path | None = None) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        if into is None:
            return bytes(response.read(limit))
        with open(into, "wb") as out:
            total = 0
            while chunk := response.read(1 << 20):
                total += len(chunk)
                if total > limit:
                    raise PythonUnavailable(f"{url} is larger than {limit >> 20} MiB")
                out.write(chunk)
    return b""


def _mirror() -> str:
    mirror = os.environ.get(MIRROR_ENV, "").rstrip("/") or DEFAULT_MIRROR
    if mirror.startswith("/"):
        mirror = "file://" + mirror
    if not mirror.startswith(("https://", "http://", "file://")):
        raise PythonUnavailable(f"{MIRROR_ENV}={mirror!r} is not an https://, http:// or "
                                "file:// address or an absolute directory")
    return mirror


def _expected_sha(base: str, release: str, name: str) -> str:
    """The archive's checksum from its release: ``SHA256SUMS`` or ``<name>.sha256``."""
    unreachable: list[str] = []
    for url in (f"{base}/{release}/SHA256SUMS", f"{base}/{release}/{name}.sha256"):
        try:
            text = _read_url(url, 4 << 20).decode(errors="replace")
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                unreachable.append(f"{url}: HTTP {exc.code}")
            continue
        except (OSError, urllib.error.URLError) as exc:
            reason = getattr(exc, "reason", exc)
            if not isinstance(reason, FileNotFoundError):  # (a mirror directory's 404)
                unreachable.append(f"{url}: {reason}")
            continue
        for line in text.splitlines():
            fields = line.split()
            if fields and re.fullmatch(r"[0-9a-f]{64}", fields[0]) and (
                    len(fields) == 1 or fields[-1].lstrip("*") == name):
                return fields[0]
    if unreachable:
        raise PythonUnavailable(f"cannot reach {unreachable[0]}")
    raise PythonUnavailable(f"{base}/{release} has no checksum for {name} (SHA256SUMS or "
                            f"{name}.sha256)")


def download(series: str, cache: Path, log_line: Callable[[str], None]) -> Path:
    """Download the pinned archive of ``series`` into ``cache``, checked; returns its path."""
    release, _ = RELEASES[series]
    name = archive_name(series)
    base = _mirror()
    url = f"{base}/{release}/{name}"
    log_line(f"downloading {url}")
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=".download-")
    os.close(fd)
    try:
        expected = _expected_sha(base, release, name)
        _read_url(url, MAX_ARCHIVE, Path(tmp))
        actual = _hash_file(Path(tmp))
        if actual != expected:
            raise PythonUnavailable(f"{url} has sha256 {actual}, its release says {expected}")
        os.replace(tmp, cache / name)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return cache / name


def locate(version: str, data_dir: Path, log_line: Callable[[str], None]) -> Archive:
    """The archive for ``version``: one the user provides, else the pinned download."""
    series = series_of(version)
    dirs = archive_dirs(data_dir)
    path = find_local(version, dirs)
    if path is None:
        pinned = RELEASES.get(series)
        where = " or ".join(str(d) for d in dirs)
        wanted = f"cpython-{version}*-{triple()}-install_only.tar.gz" if version != series \
            else f"cpython-{series}.*-{triple()}-install_only.tar.gz"
        if pinned is None or (version != series and version != pinned[1]):
            known = ", ".join(f"{s} ({f})" for s, (_, f) in RELEASES.items())
            raise PythonUnavailable(
                f"Python {version} is not one hutch downloads (it downloads {known}); put "
                f"python-build-standalone's {wanted} in {where}")
        try:
            path = download(series, data_dir / "pythons", log_line)
        except (OSError, urllib.error.URLError, PythonUnavailable) as exc:
            raise PythonUnavailable(
                f"Python {version} comes from python-build-standalone, and downloading "
                f"{archive_name(series)} failed: {exc}. Without a download: put that file "
                f"(or any {wanted}) in {where}, or set {MIRROR_ENV} to a mirror of "
                f"{DEFAULT_MIRROR} (a directory or address laid out as it is), then build "
                "again") from exc
    match = _ARCHIVE.fullmatch(path.name)
    assert match is not None
    return Archive(path, match.group(1), _sha256(path))


def unpack_to_layer(archive: Archive, work: Path) -> Path:
    """A layer directory with the archive's ``python/`` tree at ``usr/local``; the
    archive's entries are checked like any layer's (no escape, no devices)."""
    root = work / "layer"
    (root / "usr" / "local").mkdir(parents=True)
    try:
        with tarfile.open(archive.path, "r:gz") as tar:
            members = []
            for member in tar.getmembers():
                parts = member.name.split("/", 1)
                if parts[0] != "python":
                    raise PythonUnavailable(f"{archive.path.name}: {member.name!r} is outside "
                                            "its python/ directory")
                if len(parts) == 1 or not parts[1].strip("/"):
                    continue
                member.name = parts[1]
                member.uid = member.gid = 0  # the builder's ids mean nothing here
                if member.islnk():
                    member.linkname = member.linkname.split("/", 1)[-1]
                members.append(member)
            fd = inroot.open_root(root)
            try:
                extractor = inroot.Extractor(fd, follow=False, whiteouts=False)
                for member in members:
                    extractor.extract(tar, member, ["usr", "local"])
            finally:
                os.close(fd)
    except (OSError, tarfile.TarError, inroot.UnsafeEntry) as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise PythonUnavailable(f"{archive.path}: not a usable python-build-standalone "
                                f"archive: {exc}") from exc
    return root
