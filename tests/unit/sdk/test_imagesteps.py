"""hutch.sdk.imagesteps and hutch.Image: steps are checked and built at declaration.

Images are only constructed here (never built or resolved); each step's wire form is checked
against the engine's :class:`hutch.api.models.BuildImageRequest`.
"""

from __future__ import annotations

import io
import json
import shlex
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from hutch.api.imagemodels import (
    DEBIAN_PYTHON_SUITES,
    PYTHON_SERIES,
    BuildImageRequest,
    ConfigStep,
    CopyStep,
    RunStep,
)
from hutch.api.models import CreateSandboxRequest
from hutch.exception import InvalidError
from hutch.sdk.image import Image
from hutch.sdk.imagesteps import LocalFiles
from hutch.sdk.secret import Secret

FAKE_CONTEXT = "sha256:" + "0" * 64
SHELL_OPERATORS = {";", "&", "&&", "|", "||", "(", ")", "<", ">", ">>"}


def _base() -> Image:
    return Image.debian_slim("3.11")


def _steps(image: Image) -> tuple[Any, ...]:
    return image._steps


def _last(image: Image) -> Any:
    return _steps(image)[-1]


def _wire_step(step: Any) -> dict[str, Any]:
    if isinstance(step, LocalFiles):
        return {"kind": "copy", "dest": step.dest, "description": step.description,
                "context": FAKE_CONTEXT}
    assert isinstance(step, dict)
    return dict(step)


def _validate(image: Image) -> BuildImageRequest:
    return BuildImageRequest.model_validate(
        {"base": image._base, "steps": [_wire_step(s) for s in _steps(image)]})


def _argv(command: str) -> list[str]:
    return shlex.split(command)


def _operators(command: str) -> set[str]:
    """The shell control operators ``command`` holds outside quotes."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    return set(lexer) & SHELL_OPERATORS


def _tar_members(data: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    out: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            f = tar.extractfile(m) if m.isreg() else None
            out[m.name] = (m, f.read() if f else None)
    return out


# package names ----------------------------------------------------------------------------
INSTALLERS: dict[str, Callable[..., Image]] = {
    "apt_install": lambda *a, **k: _base().apt_install(*a, **k),
    "pip_install": lambda *a, **k: _base().pip_install(*a, **k),
    "uv_pip_install": lambda *a, **k: _base().uv_pip_install(*a, **k),
}
BAD_PACKAGES: list[Any] = ["-e", "--index-url=https://evil", " -x", "", "   ", "a b", "a\tb",
                           "a\nb", 3, None, b"bytes", ["ok", "-r"], ["ok", ["nested"]]]


@pytest.mark.parametrize("installer", sorted(INSTALLERS))
@pytest.mark.parametrize("bad", BAD_PACKAGES, ids=repr)
def test_bad_package_names_raise(installer: str, bad: Any) -> None:
    with pytest.raises(InvalidError):
        INSTALLERS[installer]("good", bad)


@pytest.mark.parametrize("installer", sorted(INSTALLERS))
def test_no_packages_raise(installer: str) -> None:
    with pytest.raises(InvalidError):
        INSTALLERS[installer]()
    with pytest.raises(InvalidError):
        INSTALLERS[installer]([])


@pytest.mark.parametrize("installer", sorted(INSTALLERS))
def test_package_lists_flatten(installer: str) -> None:
    step = _last(INSTALLERS[installer]("a", ["b", "c"], ("d",)))
    install = [c for c in step["commands"] if " install " in c][-1]
    assert _argv(install)[-4:] == ["a", "b", "c", "d"]


@pytest.mark.parametrize("installer", sorted(INSTALLERS))
def test_package_names_are_quoted(installer: str) -> None:
    packages = ["numpy>=1.26,<3", "pkg[extra]", "x;touch/tmp/pwned", "$(id)", "a|b"]
    step = _last(INSTALLERS[installer](packages))
    install = [c for c in step["commands"] if " install " in c][-1]
    assert _argv(install)[-len(packages):] == packages
    assert not _operators(install)


# pip --------------------------------------------------------------------------------------
def test_pip_install_command() -> None:
    step = _last(_base().pip_install("six", "attrs==23.1"))
    assert step["kind"] == "run"
    [command] = step["commands"]
    argv = _argv(command)
    assert argv[:4] == ["python3", "-m", "pip", "install"]
    assert "--no-cache-dir" in argv
    assert argv[-2:] == ["six", "attrs==23.1"]
    assert "--pre" not in argv
    assert step["description"] == "pip_install six attrs==23.1"
    assert step["force_build"] is False
    assert step["env"] == {}
    assert step["secret_env"] == {}


@pytest.mark.parametrize("hostile", [
    "https://pypi.example/simple; touch /tmp/pwned",
    "https://pypi.example/my index",
    "https://x/ && rm -rf /",
    "$(touch /tmp/pwned)",
    "it's",
])
@pytest.mark.parametrize("option", ["index_url", "extra_index_url", "find_links"])
@pytest.mark.parametrize("installer", ["pip_install", "uv_pip_install"])
def test_options_cannot_inject(installer: str, option: str, hostile: str) -> None:
    step = _last(INSTALLERS[installer]("six", **{option: hostile}))
    command = step["commands"][-1]
    argv = _argv(command)
    flag = "--" + option.replace("_", "-")
    assert argv[argv.index(flag) + 1] == hostile
    assert not _operators(command)
    assert argv[-1] == "six"


@pytest.mark.parametrize("option", ["index_url", "extra_index_url", "find_links"])
def test_non_str_options_raise(option: str) -> None:
    with pytest.raises(InvalidError):
        _base().pip_install("six", **{option: 3})
    with pytest.raises(InvalidError):
        _base().uv_pip_install("six", **{option: ["x"]})


def test_pre_and_extra_options() -> None:
    step = _last(_base().pip_install("six", pre=True,
                                     extra_options="--no-deps --only-binary ':all:' 'a;b'"))
    argv = _argv(step["commands"][0])
    assert "--pre" in argv
    assert "--no-deps" in argv
    i = argv.index("--only-binary")
    assert argv[i + 1] == ":all:"
    assert "a;b" in argv
    assert not _operators(step["commands"][0])
    assert argv[-1] == "six"

    uv = _last(_base().uv_pip_install("six", pre=True, extra_options="--no-deps"))
    uv_argv = _argv(uv["commands"][1])
    assert "--prerelease=allow" in uv_argv
    assert "--pre" not in uv_argv
    assert "--no-deps" in uv_argv


def test_extra_options_must_be_str() -> None:
    with pytest.raises(InvalidError):
        _base().pip_install("six", extra_options=["--no-deps"])  # type: ignore[arg-type]
    with pytest.raises(InvalidError):
        _base().uv_pip_install("six", extra_options=None)  # type: ignore[arg-type]


def test_unbalanced_extra_options_raise_invalid() -> None:
    with pytest.raises(InvalidError):
        _base().pip_install("six", extra_options="--config-settings 'unterminated")


def test_pip_install_from_requirements(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("six\n")
    image = _base().pip_install_from_requirements(str(req), index_url="https://idx/simple")
    files, run = _steps(image)
    assert isinstance(files, LocalFiles)
    assert files.dest == "/.hutch"
    [(member, content)] = _tar_members(files.make_tar()).values()
    assert member.name == "requirements.txt"
    assert content == b"six\n"
    argv = _argv(run["commands"][0])
    assert argv[-2:] == ["-r", "/.hutch/requirements.txt"]
    assert argv[argv.index("--index-url") + 1] == "https://idx/simple"
    _validate(image)
    with pytest.raises(InvalidError):
        _base().pip_install_from_requirements(str(tmp_path / "missing.txt"))


# apt and uv -------------------------------------------------------------------------------
def test_apt_install_commands() -> None:
    step = _last(_base().apt_install("jq", ["curl", "git"]))
    update, install, clean = step["commands"]
    for command in step["commands"]:
        assert command.startswith("DEBIAN_FRONTEND=noninteractive apt-get ")
    assert _argv(update)[-2:] == ["update", "-q"]
    argv = _argv(install)
    i = argv.index("install")
    assert argv[i:] == ["install", "-y", "-q", "--no-install-recommends", "jq", "curl", "git"]
    assert "clean" in _argv(clean)
    assert "rm -rf /var/lib/apt/lists/*" in clean
    assert step["description"] == "apt_install jq curl git"


def test_uv_pip_install_commands() -> None:
    step = _last(_base().uv_pip_install("six", ["attrs"], index_url="https://idx/simple"))
    ensure_uv, install = step["commands"]
    assert "command -v uv" in ensure_uv
    assert _argv(ensure_uv)[-1] == "uv"
    argv = _argv(install)
    assert argv[:5] == ["uv", "pip", "install", "--system", "--break-system-packages"]
    assert argv[argv.index("--index-url") + 1] == "https://idx/simple"
    assert argv[-2:] == ["six", "attrs"]
    assert step["description"] == "uv_pip_install six attrs"


def test_uv_pip_install_requirements_files_and_a_uv_version(tmp_path: Path) -> None:
    """Modal's ``requirements=`` (local files, copied in) and ``uv_version=``."""
    (tmp_path / "a.txt").write_text("six\n")
    (tmp_path / "b.txt").write_text("attrs\n")
    image = _base().uv_pip_install(requirements=[str(tmp_path / "a.txt"),
                                                 str(tmp_path / "b.txt")], uv_version="0.5.1")
    ensure_uv, install = _last(image)["commands"]
    assert _argv(ensure_uv)[-1] == "uv==0.5.1" and "command -v" not in ensure_uv
    assert _argv(install)[-4:] == ["-r", "/.hutch/uv-requirements-0.txt",
                                   "-r", "/.hutch/uv-requirements-1.txt"]
    with pytest.raises(InvalidError, match=r"requirements file .* not found"):
        _base().uv_pip_install(requirements=[str(tmp_path / "none.txt")])
    with pytest.raises(InvalidError, match="at least one package or requirements file"):
        _base().uv_pip_install()


# run_commands -----------------------------------------------------------------------------
def test_run_commands_flatten_in_order() -> None:
    step = _last(_base().run_commands("a", ["b", "c"], "d", force_build=True))
    assert step["commands"] == ["a", "b", "c", "d"]
    assert step["force_build"] is True
    assert step["description"] == "run_commands a; b; c; d"


@pytest.mark.parametrize("commands", [(), ([],), ([], [])])
def test_run_commands_needs_commands(commands: tuple[Any, ...]) -> None:
    with pytest.raises(InvalidError):
        _base().run_commands(*commands)


@pytest.mark.parametrize("bad", [3, None, b"echo", ["ok", 4]], ids=repr)
def test_run_commands_must_be_str(bad: Any) -> None:
    with pytest.raises(InvalidError):
        _base().run_commands("ok", bad)


@pytest.mark.parametrize("env", [{"A": 1}, {"A": None}, {1: "a"}, "A=1", ["A=1"]], ids=repr)
def test_run_env_must_be_str_dict(env: Any) -> None:
    with pytest.raises(InvalidError):
        _base().run_commands("true", env=env)
    with pytest.raises(InvalidError):
        _base().pip_install("six", env=env)


# secrets ----------------------------------------------------------------------------------
def test_secrets_go_to_secret_env_only() -> None:
    secrets = [Secret.from_dict({"TOKEN": "s3cr3t-one", "OTHER": "x"}),
               Secret.from_dict({"TOKEN": "s3cr3t-two"})]
    for image in (
        _base().run_commands("echo $TOKEN", env={"A": "1"}, secrets=secrets),
        _base().pip_install("six", env={"A": "1"}, secrets=secrets),
        _base().apt_install("jq", env={"A": "1"}, secrets=secrets),
        _base().uv_pip_install("six", env={"A": "1"}, secrets=secrets),
    ):
        step = _last(image)
        assert step["secret_env"] == {"TOKEN": "s3cr3t-two", "OTHER": "x"}  # later wins
        assert step["env"] == {"A": "1"}
        visible = json.dumps({k: v for k, v in step.items() if k != "secret_env"})
        assert "s3cr3t" not in visible
        assert "s3cr3t" not in repr(image)
        wire = _validate(image).steps[-1]
        assert isinstance(wire, RunStep)
        assert wire.secret_env == {"TOKEN": "s3cr3t-two", "OTHER": "x"}


@pytest.mark.parametrize("secrets", [Secret.from_dict({"A": "1"}), ["A=1"], [{"A": "1"}], 3],
                         ids=repr)
def test_secrets_must_be_a_list_of_secrets(secrets: Any) -> None:
    with pytest.raises(InvalidError):
        _base().run_commands("true", secrets=secrets)


# remote paths -----------------------------------------------------------------------------
BAD_REMOTES: list[Any] = ["relative/path", "", "./x", "/a/../b", "/..", "/a/b/..", "/a\0b", 3,
                          None]


@pytest.mark.parametrize("remote", BAD_REMOTES, ids=repr)
def test_bad_remote_paths_raise(remote: Any, tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    f.write_text("x")
    with pytest.raises(InvalidError):
        _base().add_local_file(f, remote)
    with pytest.raises(InvalidError):
        _base().add_local_dir(tmp_path, remote)


@pytest.mark.parametrize("workdir", ["relative", "", "/a/../b", "/a/..", "/a\0b"], ids=repr)
def test_bad_workdir_raises(workdir: str) -> None:
    with pytest.raises(InvalidError):
        _base().workdir(workdir)


def test_workdir_step() -> None:
    image = _base().workdir(Path("/srv/app"))
    assert _last(image) == {"kind": "config", "workdir": "/srv/app"}
    wire = _validate(image).steps[-1]
    assert isinstance(wire, ConfigStep)
    assert wire.workdir == "/srv/app"


# env, entrypoint, cmd ---------------------------------------------------------------------
def test_env_step() -> None:
    image = _base().env({"PATH": "/opt/bin:$PATH", "EMPTY": ""})
    assert _last(image) == {"kind": "config", "env": {"PATH": "/opt/bin:$PATH", "EMPTY": ""}}
    wire = _validate(image).steps[-1]
    assert isinstance(wire, ConfigStep)
    assert wire.env == {"PATH": "/opt/bin:$PATH", "EMPTY": ""}


@pytest.mark.parametrize("env", [{"A": 1}, {"A": None}, {1: "a"}, {"A": b"x"}, {}, "A=1",
                                 [("A", "1")]], ids=repr)
def test_env_values_must_be_str(env: Any) -> None:
    with pytest.raises(InvalidError):
        _base().env(env)


@pytest.mark.parametrize("env", [{"A=B": "c"}, {"": "x"}, {"1X": "y"}, {"A": "a\0b"}],
                         ids=repr)
def test_env_names_are_checked(env: dict[str, str]) -> None:
    with pytest.raises(InvalidError):
        _base().env(env)


@pytest.mark.parametrize("doc", [{"env": {"A=B": "c"}}, {"env": {"": "x"}},
                                 {"env": {"A": "a\0b"}}, {"entrypoint": ["a\0b"]},
                                 {"cmd": ["a\0b"]}], ids=repr)
def test_engine_checks_config_steps(doc: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ConfigStep.model_validate({"kind": "config", **doc})


@pytest.mark.parametrize("method", ["entrypoint", "cmd"])
def test_entrypoint_and_cmd(method: str) -> None:
    argv = ["/bin/sh", "-c", "echo hi"]
    image = getattr(_base(), method)(argv)
    step = _last(image)
    assert step == {"kind": "config", method: argv}
    argv.append("mutated")
    assert step[method] == ["/bin/sh", "-c", "echo hi"]  # a copy
    wire = _validate(image).steps[-1]
    assert isinstance(wire, ConfigStep)
    assert getattr(wire, method) == ["/bin/sh", "-c", "echo hi"]


@pytest.mark.parametrize("value", ["/bin/sh", ("/bin/sh",), ["/bin/sh", 1], [b"x"],
                                   {"a": "b"}], ids=repr)
@pytest.mark.parametrize("method", ["entrypoint", "cmd"])
def test_entrypoint_and_cmd_must_be_str_lists(method: str, value: Any) -> None:
    with pytest.raises(InvalidError):
        getattr(_base(), method)(value)


# local files ------------------------------------------------------------------------------
def test_add_local_file_missing_or_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidError):
        _base().add_local_file(tmp_path / "missing.txt", "/x")
    with pytest.raises(InvalidError):
        _base().add_local_file(tmp_path, "/x")


def test_add_local_dir_on_a_file_or_missing(tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    f.write_text("x")
    with pytest.raises(InvalidError):
        _base().add_local_dir(f, "/x")
    with pytest.raises(InvalidError):
        _base().add_local_dir(tmp_path / "missing", "/x")


@pytest.mark.parametrize(("remote", "dest", "name"), [
    ("/dst/", "/dst", "local.txt"),
    ("/deep/er/", "/deep/er", "local.txt"),
    ("/", "/", "local.txt"),
    ("/dst/renamed.txt", "/dst", "renamed.txt"),
    ("/top.txt", "/", "top.txt"),
])
def test_add_local_file_names(tmp_path: Path, remote: str, dest: str, name: str) -> None:
    local = tmp_path / "local.txt"
    local.write_text("payload")
    local.chmod(0o751)
    image = _base().add_local_file(str(local), remote, copy=True)
    step = _last(image)
    assert isinstance(step, LocalFiles)
    assert step.dest == dest
    [(member, content)] = _tar_members(step.make_tar()).values()
    assert member.name == name
    assert content == b"payload"
    assert stat.S_IMODE(member.mode) == 0o751
    wire = _validate(image).steps[-1]
    assert isinstance(wire, CopyStep)
    assert (wire.dest, wire.context) == (dest, FAKE_CONTEXT)


def test_add_local_file_reads_the_file_at_declaration(tmp_path: Path) -> None:
    local = tmp_path / "f.txt"
    local.write_text("before")
    step = _last(_base().add_local_file(local, "/f.txt", copy=True))
    local.write_text("after, and longer")
    assert isinstance(step, LocalFiles)
    [(_, content)] = _tar_members(step.make_tar()).values()
    assert content == b"before"
    local.unlink()
    assert step.make_tar() == step.make_tar()


def test_add_local_dir_reads_files_at_declaration(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.log").write_text("b")
    image = _base().add_local_dir(src, "/app", ignore=["*.log"], copy=True)
    (src / "a.txt").write_text("changed later")
    (src / "late.txt").write_text("late")
    step = _last(image)
    assert isinstance(step, LocalFiles)
    assert step.dest == "/app"
    members = _tar_members(step.make_tar())
    assert sorted(members) == ["a.txt", "sub"]
    assert members["a.txt"][1] == b"a"
    _validate(image)


# add_local_python_source ------------------------------------------------------------------
def _make_package(root: Path, name: str) -> Path:
    pkg = root / name
    (pkg / "__pycache__").mkdir(parents=True)
    (pkg / "__init__.py").write_text("VALUE = 1\n")
    (pkg / "mod.py").write_text("X = 2\n")
    (pkg / "compiled.pyc").write_bytes(b"\0")
    (pkg / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    return pkg


def test_add_local_python_source_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    _make_package(tmp_path, "hutch_probe_pkg")
    monkeypatch.syspath_prepend(str(tmp_path))
    image = _base().add_local_python_source("hutch_probe_pkg", copy=True)
    config, files = _steps(image)
    assert isinstance(files, LocalFiles)
    assert files.dest == "/root/hutch_probe_pkg"
    assert sorted(_tar_members(files.make_tar())) == ["__init__.py", "mod.py"]
    assert config == {"kind": "config", "env": {"PYTHONPATH": "/root${PYTHONPATH:+:$PYTHONPATH}"}}
    request = _validate(image)
    assert [type(s) for s in request.steps] == [ConfigStep, CopyStep]


def test_add_local_python_source_module_and_ignore(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _make_package(tmp_path, "hutch_probe_pkg2")
    (tmp_path / "hutch_probe_mod.py").write_text("Y = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    image = _base().add_local_python_source("hutch_probe_mod", "hutch_probe_pkg2",
                                            ignore=["mod.py"], copy=True)
    config, module, package = _steps(image)
    assert isinstance(module, LocalFiles)
    assert module.dest == "/root"
    assert list(_tar_members(module.make_tar())) == ["hutch_probe_mod.py"]
    assert isinstance(package, LocalFiles)
    assert package.dest == "/root/hutch_probe_pkg2"
    names = sorted(_tar_members(package.make_tar()))
    assert "mod.py" not in names
    assert "__pycache__" in names  # an explicit ignore replaces the default one
    assert config["env"] == {"PYTHONPATH": "/root${PYTHONPATH:+:$PYTHONPATH}"}


@pytest.mark.parametrize("modules", [(), ("hutch_no_such_module_anywhere",), ("sys",),
                                     ("not-a-name",), ("os.path",), (3,)], ids=repr)
def test_add_local_python_source_bad_modules(modules: tuple[Any, ...]) -> None:
    with pytest.raises(InvalidError):
        _base().add_local_python_source(*modules)


# bases ------------------------------------------------------------------------------------
def test_debian_slim_versions() -> None:
    for version in (*PYTHON_SERIES, "3.12.7", "3.10.13", "3.14.0"):
        image = Image.debian_slim(version)
        assert image._base == {"kind": "debian_slim", "python_version": version}
        _validate(image)
    assert set(DEBIAN_PYTHON_SUITES) < set(PYTHON_SERIES)
    assert Image.debian_slim()._base["python_version"] in PYTHON_SERIES
    for bad in ("3.9", "3.15", "3", "3.12.7.1", "3.12t", "2.7", "", "3.12 ", "3.1x"):
        with pytest.raises(InvalidError) as info:
            Image.debian_slim(bad)
        message = str(info.value)
        assert repr(bad) in message
        for version in PYTHON_SERIES:
            assert version in message
    with pytest.raises(TypeError):
        Image.debian_slim(3.11)  # type: ignore[arg-type]
    with pytest.raises(InvalidError):
        Image.debian_slim(["3.11"])  # type: ignore[arg-type]


def test_other_bases(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    layout.mkdir()
    (layout / "index.json").write_text("{}")
    archive = tmp_path / "image.tar"
    archive.write_bytes(b"")
    creds = Secret.from_dict({"REGISTRY_USERNAME": "u", "REGISTRY_PASSWORD": "p:w"})
    images = [
        Image.from_id("hutch/some:ref"),
        Image.from_registry("docker.io/library/alpine:3.20"),
        Image.from_registry("localhost:5000/x:1", secret=creds, force_build=True),
        Image.from_oci_layout(layout),
        Image.from_oci_layout(str(layout), tag="v1"),
        Image.from_oci_archive(archive),
    ]
    aws = Secret.from_dict({"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "s/k",
                            "AWS_REGION": "eu-west-1"})
    gcp = Secret.from_dict({"SERVICE_ACCOUNT_JSON": '{"type": "service_account"}'})
    images += [Image.from_aws_ecr("1.dkr.ecr.eu-west-1.amazonaws.com/a:1", aws),
               Image.from_gcp_artifact_registry("eu-docker.pkg.dev/p/r/i:1", gcp),
               Image.from_registry("localhost:5000/y:1", add_python="3.12")]
    for image in images:
        _validate(image.run_commands("true"))
    assert images[2]._base["credentials"] == "u:p:w"
    assert images[6]._base["auth"] == "aws"
    assert images[6]._base["credentials"] == "AKID:s/k:eu-west-1"
    assert images[7]._base["credentials"] == '_json_key:{"type": "service_account"}'
    assert images[8]._base["add_python"] == "3.12"
    assert images[3]._base == {"kind": "from_oci", "path": str(layout), "archive": False}
    assert images[5]._base["archive"] is True


@pytest.mark.parametrize("make", [
    lambda p: Image.from_id(""),
    lambda p: Image.from_registry(""),
    lambda p: Image.from_registry("alpine 3"),
    lambda p: Image.from_registry("alpine", setup_dockerfile_commands=["RUN x"]),
    lambda p: Image.from_registry("alpine", add_python="3.9"),
    lambda p: Image.from_registry("alpine", add_python="3.12.1"),
    lambda p: Image.from_aws_ecr("1.dkr.ecr.x.amazonaws.com/a:1"),
    lambda p: Image.from_aws_ecr("1.dkr.ecr.x.amazonaws.com/a:1", Secret.from_dict(
        {"REGISTRY_USERNAME": "u", "REGISTRY_PASSWORD": "p"})),
    lambda p: Image.from_gcp_artifact_registry("eu-docker.pkg.dev/p/r/i:1"),
    lambda p: Image.from_registry("alpine", secret=Secret.from_dict({
        "REGISTRY_USERNAME": "u", "REGISTRY_PASSWORD": "p", "SERVICE_ACCOUNT_JSON": "{}"})),
    lambda p: Image.from_registry("alpine", unknown_option=True),
    lambda p: Image.from_registry("alpine", secret=Secret.from_dict({"REGISTRY_USERNAME": "u"})),
    lambda p: Image.from_oci_layout(p),
    lambda p: Image.from_oci_archive(p / "missing.tar"),
])
def test_bad_bases_raise(make: Callable[[Path], Image], tmp_path: Path) -> None:
    with pytest.raises(InvalidError):
        make(tmp_path)


# immutability and the wire form ---------------------------------------------------------
def test_images_are_immutable(tmp_path: Path) -> None:
    base = Image.debian_slim("3.11", force_build=True)
    one = base.apt_install("jq")
    two = one.pip_install("six")
    assert one is not base and two is not one
    assert _steps(base) == ()
    assert len(_steps(one)) == 1
    assert len(_steps(two)) == 2
    assert _steps(two)[0] is _steps(one)[0]
    assert two._force_build is True
    # a refused step leaves the image as it was
    with pytest.raises(InvalidError):
        two.workdir("relative")
    assert len(_steps(two)) == 2
    branch = one.env({"A": "1"})
    assert len(_steps(two)) == 2 and len(_steps(branch)) == 2
    assert _steps(branch)[1] != _steps(two)[1]


def test_every_step_validates_on_the_wire(tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    f.write_text("x")
    secret = Secret.from_dict({"TOKEN": "t"})
    image = (_base()
             .apt_install("jq", secrets=[secret])
             .pip_install("six", index_url="https://i/simple", pre=True, force_build=True)
             .uv_pip_install("attrs", extra_options="--no-deps")
             .run_commands("echo 1", ["echo 2"], env={"A": "b"})
             .env({"A": "1"})
             .workdir("/app")
             .entrypoint(["/bin/sh"])
             .cmd(["-c", "true"])
             .add_local_file(f, "/app/", copy=True)
             .add_local_dir(tmp_path, "/data", copy=True))
    request = _validate(image)
    assert [type(s) for s in request.steps] == [RunStep] * 4 + [ConfigStep] * 4 + [CopyStep] * 2
    assert request.steps[1].force_build is True  # type: ignore[union-attr]
    assert request.steps[0].secret_env == {"TOKEN": "t"}  # type: ignore[union-attr]


# copy=False -------------------------------------------------------------------------------
def test_local_files_taken_at_start_are_no_build_step(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from hutch.sdk.imagesteps import MountedFiles

    src = tmp_path / "src"
    (src / "node_modules" / "deep").mkdir(parents=True)
    (src / "node_modules" / "deep" / "x.js").write_text("x")
    (src / "a.py").write_text("a")
    (src / "b.log").write_text("b")
    (tmp_path / "one.txt").write_text("1")
    _make_package(tmp_path, "hutch_probe_pkg3")
    monkeypatch.syspath_prepend(str(tmp_path))
    image = (_base().env({"A": "1"})
             .add_local_dir(src, "/app/", ignore=["node_modules", "*.log"])
             .add_local_file(tmp_path / "one.txt", "/etc/")
             .add_local_python_source("hutch_probe_pkg3")
             .workdir("/app"))  # settings may follow; they need no files
    mounts = image._mounts()
    assert [type(m) for m in mounts] == [MountedFiles] * 3
    assert [m.wire() for m in mounts] == [
        {"source": str(src), "dest": "/app", "file": False,
         "exclude": ["b.log", "node_modules"]},
        {"source": str(tmp_path / "one.txt"), "dest": "/etc/one.txt", "file": True},
        {"source": str(tmp_path / "hutch_probe_pkg3"), "dest": "/root/hutch_probe_pkg3",
         "file": False, "exclude": ["__pycache__", "compiled.pyc"]},
    ]
    (src / "late.py").write_text("files are read when a sandbox starts, not declared")
    assert mounts[0].wire()["exclude"] == ["b.log", "node_modules"]
    request = CreateSandboxRequest.model_validate({"local_mounts": [m.wire() for m in mounts]})
    assert request.local_mounts[0].dest == "/app"


def test_a_build_step_after_local_files_is_modals_error(tmp_path: Path) -> None:
    import asyncio

    image = _base().add_local_dir(tmp_path, "/app").run_commands("ls /app")
    with pytest.raises(InvalidError, match="copy=True"):
        asyncio.run(image.resolve())


@pytest.mark.parametrize("mount", [
    {"source": "relative", "dest": "/a"}, {"source": "/a", "dest": "/"},
    {"source": "/a/../b", "dest": "/a"}, {"source": "/a", "dest": "/x", "exclude": ["/abs"]},
    {"source": "/a", "dest": "/x", "exclude": ["../up"]},
])
def test_bad_local_mounts_are_refused_by_the_engine(mount: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CreateSandboxRequest.model_validate({"local_mounts": [mount]})


@pytest.mark.parametrize("requirement", [
    "rich >= 13", "esm @ git+https://github.com/org/esm.git@81b3", "six; python_version >= '3'",
    "huggingface_hub[hf_transfer]"])
def test_pip_takes_requirement_strings_as_one_argument(requirement: str) -> None:
    for step in (_last(_base().pip_install(requirement)),
                 _last(_base().uv_pip_install(requirement))):
        command = step["commands"][-1]
        assert shlex.split(command)[-1] == requirement
    with pytest.raises(InvalidError):
        _base().apt_install("jq curl")  # apt takes names


@pytest.mark.parametrize("bad", ["-e x", "--index-url http://x", "a\nb", "  "])
def test_pip_refuses_options_in_requirements(bad: str) -> None:
    with pytest.raises(InvalidError):
        _base().pip_install(bad)
