"""Finding, downloading (from a ``file://`` mirror made here) and unpacking
python-build-standalone archives; the interpreter itself is exercised by the integration
tests, in a sandbox."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from hutch.imagebuild import standalone
from hutch.imagebuild.standalone import PythonUnavailable


def _archive(path: Path, members: dict[str, bytes | None] | None = None) -> Path:
    members = members if members is not None else {
        "python/": None, "python/bin/": None,
        "python/bin/python3.12": b"\x7fELF not really",
        "python/lib/python3.12/os.py": b"# os\n",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name.rstrip("/"))
            info.uid = info.gid = 1234
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o755
                tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("python/bin/python3")
        link.type, link.linkname = tarfile.SYMTYPE, "python3.12"
        tar.addfile(link)
    return path


def _name(full: str, release: str = "20990101") -> str:
    return f"cpython-{full}+{release}-{standalone.triple()}-install_only.tar.gz"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(standalone.ARCHIVES_ENV, raising=False)
    monkeypatch.delenv(standalone.MIRROR_ENV, raising=False)


def test_find_local_prefers_the_newest_patch_and_exact_versions(tmp_path: Path) -> None:
    for full in ("3.12.1", "3.12.10", "3.12.9", "3.10.13"):
        _archive(tmp_path / _name(full))
    _archive(tmp_path / _name("3.12.11").replace(standalone.triple(), "riscv64-unknown-linux-gnu"))
    (tmp_path / "cpython-3.12.99-junk.tar.gz").write_bytes(b"")
    assert standalone.find_local("3.12", [tmp_path]) == tmp_path / _name("3.12.10")
    assert standalone.find_local("3.12.9", [tmp_path]) == tmp_path / _name("3.12.9")
    assert standalone.find_local("3.12.8", [tmp_path]) is None
    assert standalone.find_local("3.11", [tmp_path, tmp_path / "missing"]) is None


def test_archives_env_adds_directories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = tmp_path / "extra"
    _archive(extra / _name("3.10.13"))
    monkeypatch.setenv(standalone.ARCHIVES_ENV, f"{tmp_path / 'none'}:{extra}")
    found = standalone.locate("3.10", tmp_path / "data", lambda line: None)
    assert found.path == extra / _name("3.10.13") and found.version == "3.10.13"
    assert found.sha256 == hashlib.sha256(found.path.read_bytes()).hexdigest()


def _mirror(tmp_path: Path, series: str, sums: str | None) -> Path:
    release, _ = standalone.RELEASES[series]
    mirror = tmp_path / "mirror"
    path = _archive(mirror / release / standalone.archive_name(series),
                    {"python/": None, f"python/bin/python{series}": b"x"})
    if sums is not None:
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if sums == "right" else "0" * 64
        (mirror / release / "SHA256SUMS").write_text(
            f"{'1' * 64}  other.tar.gz\n{digest}  {path.name}\n")
    return mirror


def test_download_from_a_mirror_checks_the_release_checksum(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = _mirror(tmp_path, "3.12", "right")
    monkeypatch.setenv(standalone.MIRROR_ENV, str(mirror))
    lines: list[str] = []
    found = standalone.locate("3.12", tmp_path / "data", lines.append)
    assert found.path == tmp_path / "data" / "pythons" / standalone.archive_name("3.12")
    assert any("downloading file://" in line for line in lines)
    # downloaded once: the next build finds it in <data>/pythons without the mirror
    monkeypatch.setenv(standalone.MIRROR_ENV, str(tmp_path / "gone"))
    assert standalone.locate("3.12", tmp_path / "data", lines.append).path == found.path
    assert [n for n in os.listdir(found.path.parent) if n.startswith(".download")] == []


@pytest.mark.parametrize("sums", ["wrong", None])
def test_a_download_without_the_right_checksum_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sums: str | None) -> None:
    monkeypatch.setenv(standalone.MIRROR_ENV, "file://" + str(_mirror(tmp_path, "3.12", sums)))
    with pytest.raises(PythonUnavailable, match=r"sha256|no checksum"):
        standalone.locate("3.12", tmp_path / "data", lambda line: None)
    assert not list((tmp_path / "data" / "pythons").iterdir())


def test_offline_error_says_what_to_download_and_where(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(standalone.MIRROR_ENV, str(tmp_path / "no-mirror"))
    with pytest.raises(PythonUnavailable) as info:
        standalone.locate("3.12", tmp_path / "data", lambda line: None)
    message = str(info.value)
    assert standalone.archive_name("3.12") in message
    assert str(tmp_path / "data" / "pythons") in message
    assert standalone.MIRROR_ENV in message and standalone.DEFAULT_MIRROR in message
    with pytest.raises(PythonUnavailable, match=r"not one hutch downloads.*3\.12\.2\*"):
        standalone.locate("3.12.2", tmp_path / "data", lambda line: None)
    monkeypatch.setenv(standalone.MIRROR_ENV, "ftp://example.org")
    with pytest.raises(PythonUnavailable, match="ftp://"):
        standalone.locate("3.12", tmp_path / "data", lambda line: None)


def test_unpack_places_python_at_usr_local_owned_by_root(tmp_path: Path) -> None:
    path = _archive(tmp_path / _name("3.12.1"))
    archive = standalone.Archive(path, "3.12.1", "0" * 64)
    root = standalone.unpack_to_layer(archive, tmp_path / "work")
    binary = root / "usr/local/bin/python3.12"
    assert binary.read_bytes() == b"\x7fELF not really"
    assert os.readlink(root / "usr/local/bin/python3") == "python3.12"
    assert (root / "usr/local/lib/python3.12/os.py").is_file()
    if os.getuid() == 0:
        assert binary.stat().st_uid == 0


@pytest.mark.parametrize("bad", ["etc/passwd", "python/../../escape", "/python/abs"])
def test_unpack_refuses_entries_outside_python(tmp_path: Path, bad: str) -> None:
    path = _archive(tmp_path / _name("3.12.1"), {"python/": None, bad: b"x"})
    with pytest.raises(PythonUnavailable):
        standalone.unpack_to_layer(standalone.Archive(path, "3.12.1", ""), tmp_path / "work")
    assert not (tmp_path / "escape").exists()


def test_an_unreachable_mirror_is_named_as_such(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """No network is not a broken release: the message says which address did not answer."""
    monkeypatch.setenv(standalone.MIRROR_ENV, "https://nonexistent.invalid/pbs")
    with pytest.raises(PythonUnavailable, match=r"cannot reach https://nonexistent\.invalid"):
        standalone.locate("3.12", tmp_path / "data", lambda line: None)
