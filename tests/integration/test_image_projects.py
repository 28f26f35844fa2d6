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
from tests.helpers import hutch_cli, image_output

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


_out = image_output


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


MODEL_NAME = "tiny-model"


def _weights_path(name: str) -> str:
    return f"/models/{name}.bin"


def download_weights(size: int, *, marker: str) -> None:
    """What Modal users run at build time: fetch files into the image."""
    import os
    import sys

    os.makedirs("/models", exist_ok=True)
    with open(_weights_path(MODEL_NAME), "wb") as f:
        f.write(os.urandom(size))
    with open("/models/info.txt", "w") as f:
        f.write(f"{marker} {sys.version_info[0]}.{sys.version_info[1]}\n")


def test_run_function_runs_in_the_build_and_keeps_its_files(engine: dict[str, Any]) -> None:
    image = hutch.Image.debian_slim("3.13").run_function(
        download_weights, args=(1000,), kwargs={"marker": "built"})
    out = _out(image, "stat -c %s /models/tiny-model.bin; cat /models/info.txt")
    assert out == "1000\nbuilt 3.13\n"
    with pytest.raises(hutch.exception.ImageBuildError, match="ZeroDivisionError"):
        hutch.Image.from_id(engine["default_image"]).run_function(_fails).build()


def _fails() -> None:
    print(1 / 0)


def test_micromamba_channels_that_cannot_be_reached_are_named(engine: dict[str, Any]) -> None:
    """A channel nothing answers at: the build fails at once and says which and why."""
    image = hutch.Image.from_id(engine["default_image"]).micromamba_install(
        "numpy", channels=["http://127.0.0.1:9/nothing-listens"])
    with pytest.raises(hutch.exception.ImageBuildError,
                       match=r"micromamba: http://127\.0\.0\.1:9/nothing-listens/noarch/"
                             r"repodata\.json cannot be reached from this machine"):
        image.build()


def test_micromamba_python_from_conda_forge(engine: dict[str, Any]) -> None:
    """Where conda-forge answers, conda's Python; where it does not (as on machines that
    reach only PyPI and Debian), the error names micromamba's download address."""
    image = hutch.Image.micromamba("3.12").micromamba_install("six", channels=["conda-forge"])
    try:
        image.build()
    except hutch.exception.ImageBuildError as exc:
        assert "micro.mamba.pm" in str(exc) and "cannot be reached" in str(exc), exc
        pytest.skip(f"conda-forge is not reachable from here: {str(exc)[:200]}")
    out = _out(image, "command -v python; python -c 'import six, sys; print(sys.version[:4])'")
    assert out == "/opt/conda/bin/python\n3.12\n"


def test_publish_and_from_name_in_another_process(engine: dict[str, Any]) -> None:
    import subprocess
    import sys
    import uuid

    name = f"pub-{uuid.uuid4().hex[:8]}"
    first = hutch.Image.from_id(engine["default_image"]).run_commands("echo one > /v")
    first.publish(name)
    second = hutch.Image.from_id(engine["default_image"]).run_commands("echo two > /v")
    second.publish(f"{name}:v2", environment_name="dev")
    code = ("import hutch\n"
            f"for n, env in (({name!r}, None), ({name + ':v2'!r}, 'dev')):\n"
            "    sb = hutch.Sandbox.create('cat', '/v', image=hutch.Image.from_name(n, "
            "environment_name=env), timeout=60)\n"
            "    sb.wait(); print(sb.stdout.read().strip())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split() == ["one", "two"], out.stderr
    listing = hutch_cli("image", "ls").stdout.decode()
    assert f"hutch/named/main/{name}:latest" in listing
    with pytest.raises(hutch.exception.NotFoundError):
        hutch.Sandbox.create(image=hutch.Image.from_name(f"{name}-missing"), timeout=30)
    with pytest.raises(InvalidError, match="environment_name cannot be used"):
        hutch.Image.from_name("env/x", environment_name="dev")


def test_shell_sets_the_shell_of_later_steps(engine: dict[str, Any]) -> None:
    image = (hutch.Image.from_id(engine["default_image"]).shell(["/bin/bash", "-c"])
             .run_commands("echo ${BASH_VERSION:+bash} > /which"))
    assert _out(image, "cat /which") == "bash\n"


def test_private_repos_need_their_token(engine: dict[str, Any]) -> None:
    """The token is a secret: the step names the variable and the shell expands it; a
    secret without it fails the build with a message saying so, before any download."""
    secret = hutch.Secret.from_dict({"GITLAB_TOKEN": "glpat-not-this-one"})
    image = hutch.Image.from_id(engine["default_image"]).pip_install_private_repos(
        "github.com/acme/private@v1", git_user="robot", secrets=[secret])
    assert "glpat" not in str(image._steps[-1]["commands"])
    with pytest.raises(hutch.exception.ImageBuildError, match="GITHUB_TOKEN is not set"):
        image.build()
    for bad in (("gitea.com/a/b",), ("github.com/a/b; rm -rf /",), ()):
        with pytest.raises(InvalidError):
            hutch.Image.debian_slim().pip_install_private_repos(*bad, git_user="robot",
                                                                secrets=[secret])
    with pytest.raises(InvalidError, match="No secrets"):
        hutch.Image.debian_slim().pip_install_private_repos("github.com/a/b", git_user="r")


def test_requirement_strings_with_spaces_install(engine: dict[str, Any]) -> None:
    """As Modal's examples write them: a version range and a marker, with spaces."""
    image = hutch.Image.from_id(engine["default_image"]).pip_install(
        "six >= 1.16, < 2", "iniconfig ; python_version >= '3.8'")
    assert _out(image, PROBE).count("\n") >= 3  # sys.prefix, six, iniconfig
    assert "iniconfig" in _out(image, "pip list 2>/dev/null | grep -i iniconfig")
