"""Python projects into images with uv, pip and poetry, from PyPI, as Modal users write them.

The uv lock file is made by uv itself, in a sandbox of the default image (which has uv),
and read back: a real ``uv.lock`` of this project, not one written by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import hutch
from hutch.exception import InvalidError

PYPROJECT = """\
[project]
name = "demo"
version = "0.1.0"
requires-python = ">=3.10"
dependencies = ["six==1.16.0", "packaging>=23; python_version >= '3.8'"]

[project.optional-dependencies]
extra = ["idna==3.7"]

[dependency-groups]
dev = ["iniconfig==2.0.0"]
"""


def _out(image: hutch.Image, script: str) -> str:
    sb = hutch.Sandbox.create("sleep", "300", image=image, timeout=300)
    try:
        proc = sb.exec("sh", "-c", script, timeout=120)
        out = proc.stdout.read()
        assert proc.wait() == 0, (script, out, proc.stderr.read())
        return str(out)
    finally:
        sb.terminate()


PROBE = ("python -c 'import importlib.metadata as m, sys; "
         "print(sys.prefix); [print(n, m.version(n)) for n in sys.argv[1:] "
         "if __import__(\"importlib.util\").util.find_spec(n.replace(\"-\", \"_\"))]' "
         "six packaging idna iniconfig")


def _lock(engine: dict[str, Any], project: Path) -> None:
    """``uv lock`` of ``project``, run in a sandbox; the lock file is copied back."""
    sb = hutch.Sandbox.create("sleep", "300", image=hutch.Image.from_id(engine["default_image"]),
                              timeout=300)
    try:
        sb.mkdir("/p")
        with sb.open("/p/pyproject.toml", "w") as f:
            f.write((project / "pyproject.toml").read_text())
        # uv trusts its own roots unless told: the sandbox's bundle is the host's (which
        # may hold a proxy's CA)
        proc = sb.exec("sh", "-c", "cd /p && uv lock --python-preference only-system",
                       timeout=240, env={"SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt"})
        assert proc.wait() == 0, proc.stderr.read()
        with sb.open("/p/uv.lock") as f:
            (project / "uv.lock").write_text(f.read())
    finally:
        sb.terminate()


def test_uv_sync_with_a_lock_groups_and_extras(engine: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    _lock(engine, tmp_path)
    image = hutch.Image.debian_slim().uv_sync(str(tmp_path), groups=["dev"], extras=["extra"])
    out = _out(image, PROBE)
    assert out.splitlines()[0] == "/.uv/.venv"
    assert {"six 1.16.0", "idna 3.7", "iniconfig 2.0.0"} <= set(out.splitlines())
    lock = (tmp_path / "uv.lock").read_text()
    assert 'name = "packaging"' in lock  # locked, so --frozen installed exactly this


def test_uv_sync_without_a_lock_resolves_at_build_time(engine: dict[str, Any],
                                                       tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    out = _out(hutch.Image.debian_slim().uv_sync(str(tmp_path)), PROBE)
    lines = out.splitlines()
    assert lines[0] == "/.uv/.venv" and "six 1.16.0" in lines
    assert "iniconfig 2.0.0" in lines  # uv syncs the dev group unless told not to
    assert not any(line.startswith("idna") for line in lines)  # extras only when asked


def test_pip_install_from_pyproject_with_optional_dependencies(engine: dict[str, Any],
                                                               tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    image = hutch.Image.debian_slim().pip_install_from_pyproject(
        str(tmp_path / "pyproject.toml"), optional_dependencies=["extra"])
    lines = _out(image, PROBE).splitlines()
    assert {"six 1.16.0", "idna 3.7"} <= set(lines)
    assert not any(line.startswith("iniconfig") for line in lines)


def test_poetry_install_from_file_without_a_lock(engine: dict[str, Any],
                                                 tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.poetry]\nname = "demo"\nversion = "0.1.0"\ndescription = ""\nauthors = []\n'
        '[tool.poetry.dependencies]\npython = ">=3.10"\nsix = "1.16.0"\n'
        '[build-system]\nrequires = ["poetry-core"]\nbuild-backend = "poetry.core.masonry.api"\n')
    image = hutch.Image.debian_slim().poetry_install_from_file(
        str(tmp_path / "pyproject.toml"), ignore_lockfile=True)
    assert "six 1.16.0" in _out(image, PROBE).splitlines()


@pytest.mark.parametrize(("call", "message"), [
    (lambda p: hutch.Image.debian_slim().uv_sync(str(p / "none")), "to exist"),
    (lambda p: hutch.Image.debian_slim().uv_sync(str(p), groups="dev"), "list of names"),
    (lambda p: hutch.Image.debian_slim().pip_install_from_pyproject(str(p / "bad.toml")),
     "not valid TOML"),
    (lambda p: hutch.Image.debian_slim().pip_install_from_pyproject(str(p / "poetry.toml")),
     "poetry_install_from_file"),
    (lambda p: hutch.Image.debian_slim().poetry_install_from_file(str(p / "poetry.toml")),
     "no lock file"),
    (lambda p: hutch.Image.debian_slim().uv_sync(str(p / "ws")), "workspaces"),
])
def test_bad_projects_are_invalid(tmp_path: Path, call: Any, message: str) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    (tmp_path / "bad.toml").write_text("[project\n")
    (tmp_path / "poetry.toml").write_text('[tool.poetry.dependencies]\nsix = "*"\n')
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "pyproject.toml").write_text('[tool.uv.workspace]\nmembers = ["a"]\n')
    with pytest.raises(InvalidError, match=message):
        call(tmp_path)
