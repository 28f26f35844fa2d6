"""Every Python ``debian_slim`` takes prints its ``sys.version``, and the default image has
Modal's toolchain (a package that must compile builds).

Debian's versions come from Debian's mirror.  The others come from python-build-standalone,
which this machine cannot download (GitHub is not reachable here), so they are tested
through the documented offline path: an ``install_only`` archive in ``<data>/pythons``.  The
archive is made here from a real CPython of that version on the host (pyenv's, copied by
``tools/run-tests.sh`` to ``HUTCH_TEST_PYTHONS``), laid out as python-build-standalone lays
out its own (``python/bin``, ``python/lib``; the binary's library path made relative).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

import hutch
from hutch.exception import ImageBuildError
from hutch.imagebuild import standalone
from tests.conftest import DATA_DIR
from tests.helpers import hutch_cli
from tests.integration.registry import serve_registry

DEBIAN = {"3.11": "bookworm", "3.13": "trixie", "3.14": "forky"}


def _run(image: hutch.Image, *argv: str) -> str:
    sb = hutch.Sandbox.create(image=image, timeout=300)
    try:
        proc = sb.exec(*argv, timeout=240)
        out = proc.stdout.read()
        assert proc.wait() == 0, (argv, out, proc.stderr.read())
        return str(out)
    finally:
        sb.terminate()


VERSION = ("import os, sys, sysconfig; p = sysconfig.get_paths()['include']; "
           "assert os.path.isfile(p + '/Python.h'); print(sys.version.split()[0], p)")


@pytest.mark.parametrize("version", list(DEBIAN))
def test_debian_pythons(engine: dict[str, Any], version: str) -> None:
    image = hutch.Image.debian_slim(version)
    out = _run(image, "sh", "-c", f"python -c {VERSION!r} && cat /etc/os-release && "
               "uv --version && gcc --version && gfortran --version && pip --version")
    full, include = out.split("\n", 1)[0].split()
    assert full.startswith(version + "."), out
    assert include == f"/usr/include/python{version}", out
    assert f"VERSION_CODENAME={DEBIAN[version]}" in out or DEBIAN[version] in out, out
    assert "uv " in out and "gcc" in out and "GNU Fortran" in out
    assert f"python {version}" in out  # pip --version names the interpreter


def test_a_package_without_wheels_compiles_on_the_default_image(engine: dict[str, Any]) -> None:
    """A C extension built from source by pip (``--no-binary``), as Modal's image allows."""
    image = hutch.Image.debian_slim().pip_install("markupsafe==2.1.5",
                                                  extra_options="--no-binary markupsafe")
    out = _run(image, "python", "-c", "import markupsafe._speedups as s; print(s.__file__)")
    assert out.strip().endswith(".so"), out


# python-build-standalone, offline ------------------------------------------------------------
def _host_python(series: str) -> Path:
    root = Path(os.environ.get("HUTCH_TEST_PYTHONS", "/nonexistent"))
    found = sorted(root.glob(f"{series}.*"), key=lambda p: [int(x) for x in p.name.split(".")])
    if not found or shutil.which("patchelf") is None:
        pytest.skip(f"no CPython {series} install in HUTCH_TEST_PYTHONS ({root}) or no patchelf"
                    " to make a python-build-standalone archive from (tools/run-tests.sh "
                    "copies pyenv's there when the host has them)")
    return found[-1]


def _make_archive(prefix: Path, into: Path) -> str:
    """``cpython-X.Y.Z+local-<triple>-install_only.tar.gz`` of ``prefix``; its version."""
    full = prefix.name
    series = full.rsplit(".", 1)[0]
    name = f"cpython-{full}+local-{standalone.triple()}-install_only.tar.gz"
    if (into / name).is_file():
        return full
    work = into / f".make-{full}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(prefix, work / "python", symlinks=True, ignore=shutil.ignore_patterns(
        "test", "__pycache__", "*.a", "idlelib", "tkinter", "turtledemo"))
    binary = work / "python" / "bin" / f"python{series}"
    subprocess.run(["patchelf", "--set-rpath", "$ORIGIN/../lib", str(binary)], check=True)
    with tarfile.open(into / f".{name}", "w:gz", compresslevel=1) as tar:
        tar.add(work / "python", arcname="python")
    os.replace(into / f".{name}", into / name)
    shutil.rmtree(work)
    return full


@pytest.fixture(scope="module")
def archives(engine: dict[str, Any]) -> dict[str, str]:
    """Series -> full version of the archives put in the engine's ``<data>/pythons``."""
    into = DATA_DIR / "pythons"
    into.mkdir(parents=True, exist_ok=True)
    return {series: _make_archive(_host_python(series), into) for series in ("3.10", "3.12")}


@pytest.mark.parametrize("series", ["3.10", "3.12"])
def test_standalone_pythons_from_the_offline_directory(
        engine: dict[str, Any], archives: dict[str, str], series: str) -> None:
    full = archives[series]
    for asked in (series, full):
        out = _run(hutch.Image.debian_slim(asked), "sh", "-c",
                   f"python -c {VERSION!r} && python3 -m pip --version && uv --version && "
                   "gcc --version && cat /etc/os-release && command -v python")
        version, include = out.split("\n", 1)[0].split()
        assert version == full, out
        assert include == f"/usr/local/include/python{series}", out
        assert "VERSION_CODENAME=trixie" in out and "uv " in out
        assert "/usr/local/bin/python\n" in out


def test_add_python_to_a_registry_image(engine: dict[str, Any], archives: dict[str, str],
                                        tmp_path: Path) -> None:
    """``from_registry(add_python=...)`` puts python-build-standalone's Python at
    /usr/local of any image, as Modal's does (here: the default image, from a registry)."""
    with serve_registry(tmp_path) as address:
        tag = f"{address}/plain:1"
        assert hutch_cli("image", "push", engine["default_image"], tag).returncode == 0
        image = hutch.Image.from_registry(tag, add_python="3.12")
        out = _run(image, "sh", "-c", "python --version && command -v python && "
                   "/usr/bin/python3 --version")
    assert out.split("\n")[:2] == [f"Python {archives['3.12']}", "/usr/local/bin/python"]
    assert out.split("\n")[2].startswith("Python 3.11.")  # the image's own stays


def test_a_version_hutch_cannot_find_says_what_to_provide(
        engine: dict[str, Any], archives: dict[str, str]) -> None:
    with pytest.raises(ImageBuildError) as info:
        hutch.Image.debian_slim("3.12.0").build()
    message = str(info.value)
    assert f"cpython-3.12.0*-{standalone.triple()}-install_only.tar.gz" in message
    assert str(DATA_DIR / "pythons") in message
