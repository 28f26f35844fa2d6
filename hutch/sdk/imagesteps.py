"""Image steps as the engine takes them, checked before anything runs.

Package steps become shell commands here (``apt-get``, ``pip``, ``uv``), so the engine has
one kind of command step and the cache key is exactly the command that ran.  Bad arguments
(a package name starting with ``-``, a relative remote path, non-string env values) raise
:class:`InvalidError` at the call that declares them.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hutch.exception import InvalidError
from hutch.sdk.localfiles import IgnoreSpec, check_ignore, ignored_paths, tar_directory, tar_file
from hutch.sdk.options import check_env, check_text, shown
from hutch.sdk.secret import Secret, merge_secrets

Step = dict[str, Any]

#: What ``add_local_python_source`` leaves out by default.
PYTHON_IGNORE: tuple[str, ...] = ("__pycache__", "*.pyc", ".git", ".venv")
#: Where ``add_local_python_source`` puts modules (a sandbox's default working directory
#: is /, so /root is added to PYTHONPATH too).
PYTHON_SOURCE_DIR = "/root"
APT = ("DEBIAN_FRONTEND=noninteractive apt-get -o APT::Sandbox::User=root")


@dataclass(frozen=True)
class LocalFiles:
    """A step adding local files: its tar is made and uploaded when the image is built.
    ``as_file``: one file that becomes ``dest`` unless it is a directory of the image;
    ``chown``: their owner (Dockerfile ``COPY --chown``)."""

    dest: str
    description: str
    make_tar: Any  # () -> bytes
    as_file: bool = False
    chown: str | None = None


@dataclass(frozen=True)
class StageFiles:
    """Files from another image (``COPY --from``): ``stage`` is an earlier stage's index
    in the plan (:mod:`hutch.sdk.dockerfile`) or a base; ``image`` the Image it became."""

    stage: int | dict[str, Any]
    sources: list[str]
    dest: str
    description: str
    as_file: bool = False
    chown: str | None = None
    image: Any = None


def _flatten(items: Sequence[str | list[str]], what: str) -> list[str]:
    flat: list[str] = []
    for item in items:
        for value in (item if isinstance(item, list | tuple) else [item]):
            if not isinstance(value, str):
                raise InvalidError(f"{what} must be strings, got {type(value).__name__}")
            flat.append(check_text(value, f"{what}: {shown(value)}"))
    return flat


def flatten_text(items: Sequence[str | list[str]], what: str) -> list[str]:
    """Strings and lists of strings, flattened and checked (``dockerfile_commands``)."""
    return _flatten(items, what)


#: Where a requirement string may hold spaces (PEP 508): after its name (and extras),
#: before a version, a marker or a direct reference.
_REQUIREMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\s*(\[[^\]]*\])?\s*([@;<>=!~(]|$)")


def _packages(items: Sequence[str | list[str]], what: str, requirements: bool = False
              ) -> list[str]:
    """Package names (``apt_install``: no spaces), or with ``requirements`` Python
    requirement strings as pip takes them (``"rich >= 13"``, ``"esm @ git+https://..."``,
    ``"six; python_version >= '3'"``: each is one quoted argument).  Never an option."""
    packages = [p.strip() for p in _flatten(items, what)]
    for package in packages:
        spaced = any(c.isspace() for c in package)
        if not package or package.startswith("-") or (spaced and not (
                requirements and _REQUIREMENT.match(package))) or \
                "\n" in package or "\r" in package:
            raise InvalidError(
                f"{what}: {package!r} is not a package name (options go in extra_options)"
            )
    return packages


def _remote(path: object, what: str) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidError(f"{what}: the remote path must be absolute, got {path!r}")
    check_text(path, f"{what}: the remote path {shown(path)}")
    if ".." in Path(path).parts:
        raise InvalidError(f"{what}: the remote path may not contain '..', got {path!r}")
    return path


def _run(commands: list[str], env: dict[str, str] | None, secrets: Sequence[Secret],
         force_build: bool, description: str) -> Step:
    """A run step; every command is checked again as a whole, as it may hold options
    (``index_url``, ``extra_options``) besides what the caller checked."""
    for command in commands:
        check_text(command, f"{description.split()[0]}: the command {shown(command)}")
    return {"kind": "run", "commands": commands, "env": check_env(env, "env"),
            "secret_env": merge_secrets(secrets, {}), "force_build": bool(force_build),
            "description": description}


def apt_install(items: Sequence[str | list[str]], force_build: bool,
                env: dict[str, str] | None, secrets: Sequence[Secret]) -> Step:
    packages = _packages(items, "apt_install")
    if not packages:
        raise InvalidError("apt_install needs at least one package")
    names = " ".join(shlex.quote(p) for p in packages)
    return _run([f"{APT} update -q",
                 f"{APT} install -y -q --no-install-recommends {names}",
                 f"{APT} clean && rm -rf /var/lib/apt/lists/*"],
                env, secrets, force_build, f"apt_install {' '.join(packages)}")


def _pip_options(find_links: str | None, index_url: str | None, extra_index_url: str | None,
                 pre: bool, extra_options: str) -> list[str]:
    options: list[str] = []
    for flag, value in (("--find-links", find_links), ("--index-url", index_url),
                        ("--extra-index-url", extra_index_url)):
        if value is not None:
            name = flag[2:].replace("-", "_")
            if not isinstance(value, str):
                raise InvalidError(f"{name} must be a string")
            options += [flag, shlex.quote(check_text(value, name))]
    if pre:
        options.append("--pre")
    if not isinstance(extra_options, str):
        raise InvalidError("extra_options must be a string")
    check_text(extra_options, "extra_options")
    if extra_options:
        try:
            options += [shlex.quote(o) for o in shlex.split(extra_options)]
        except ValueError as exc:
            raise InvalidError(f"extra_options: {exc}") from exc
    return options


def pip_options(find_links: str | None, index_url: str | None, extra_index_url: str | None,
                pre: bool, extra_options: str) -> list[str]:
    """pip's options, each shell-quoted (``extra_options`` split as a shell splits it)."""
    return _pip_options(find_links, index_url, extra_index_url, pre, extra_options)


def split_options(extra_options: object, what: str) -> list[str]:
    """``extra_options`` split as a shell splits it (not quoted)."""
    if not isinstance(extra_options, str):
        raise InvalidError(f"{what}: extra_options must be a string")
    check_text(extra_options, f"{what}: extra_options")
    try:
        return shlex.split(extra_options)
    except ValueError as exc:
        raise InvalidError(f"{what}: extra_options: {exc}") from exc


def pip_install(items: Sequence[str | list[str]], *, requirements: str | None = None,
                find_links: str | None, index_url: str | None, extra_index_url: str | None,
                pre: bool, extra_options: str, force_build: bool,
                env: dict[str, str] | None, secrets: Sequence[Secret]) -> Step:
    packages = _packages(items, "pip_install", requirements=True)
    if not packages and requirements is None:
        raise InvalidError("pip_install needs at least one package")
    args = [shlex.quote(p) for p in packages]
    if requirements is not None:
        args = ["-r", shlex.quote(requirements)]
    options = _pip_options(find_links, index_url, extra_index_url, pre, extra_options)
    command = " ".join([PIP, *options, *args])
    what = f"-r {requirements}" if requirements else " ".join(packages)
    return _run([command], env, secrets, force_build, f"pip_install {what}")


#: A version of a tool as ``uv_version=`` takes it (PEP 440's characters).
_UV_VERSION = re.compile(r"[0-9][0-9A-Za-z.+!-]*")
#: pip as every package step runs it (Debian's PEP 668 marker is gone from the bases).
PIP = ("python3 -m pip install --no-cache-dir --disable-pip-version-check "
       "--root-user-action=ignore")


def tool_install(name: str, version: str | None, what: str, present_ok: bool) -> str:
    """The command installing the tool ``name`` from PyPI: ``version`` exactly; none: the
    newest, or the image's own when ``present_ok``."""
    if version is None:
        return f"command -v {name} >/dev/null || {PIP} {name}" if present_ok \
            else f"{PIP} {name}"
    if isinstance(version, str) and _UV_VERSION.fullmatch(version):
        return f"{PIP} {name}=={version}"
    raise InvalidError(f"{what} must be a version such as '0.5.1', got {version!r}")


def uv_pip_install(items: Sequence[str | list[str]], *, index_url: str | None,
                   extra_index_url: str | None, find_links: str | None, pre: bool,
                   extra_options: str, force_build: bool, env: dict[str, str] | None,
                   secrets: Sequence[Secret], requirements: Sequence[str] = (),
                   uv_version: str | None = None) -> Step:
    """``requirements``: paths in the image of requirements files (``-r``); ``uv_version``:
    that uv, installed with pip, rather than any uv the image has."""
    packages = _packages(items, "uv_pip_install", requirements=True)
    if not packages and not requirements:
        raise InvalidError("uv_pip_install needs at least one package or requirements file")
    options = _pip_options(find_links, index_url, extra_index_url, False, extra_options)
    if pre:
        options.append("--prerelease=allow")
    uv = tool_install("uv", uv_version, "uv_version", present_ok=True)
    args = [shlex.quote(p) for p in packages]
    for path in requirements:
        args += ["-r", shlex.quote(path)]
    install = " ".join(["uv pip install --system --break-system-packages", *options, *args])
    what = " ".join([*packages, *(f"-r {r}" for r in requirements)])
    return _run([uv, install], env, secrets, force_build, f"uv_pip_install {what}")


def run_commands(items: Sequence[str | list[str]], env: dict[str, str] | None,
                 secrets: Sequence[Secret], force_build: bool) -> Step:
    commands = _flatten(items, "run_commands")
    if not commands:
        raise InvalidError("run_commands needs at least one command")
    return _run(commands, env, secrets, force_build, "run_commands " + "; ".join(commands))


def config(*, env: dict[str, str] | None = None, workdir: str | None = None,
           entrypoint: list[str] | None = None, cmd: list[str] | None = None) -> Step:
    step: Step = {"kind": "config"}
    if env is not None:
        if not env:
            raise InvalidError("env needs at least one variable")
        step["env"] = check_env(env, "env")
    if workdir is not None:
        step["workdir"] = _remote(workdir, "workdir")
    for name, value in (("entrypoint", entrypoint), ("cmd", cmd)):
        if value is not None:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InvalidError(f"{name} must be a list of strings")
            step[name] = [check_text(v, f"{name}: {shown(v)}") for v in value]
    return step


@dataclass(frozen=True)
class MountedFiles:
    """Local files a sandbox takes from the host when it starts (``copy=False``): not
    part of the image's build; sent with each create (``local_mounts``)."""

    source: Path
    dest: str
    is_file: bool
    ignore: IgnoreSpec = ()
    description: str = ""

    def wire(self) -> dict[str, Any]:
        """The ``LocalMount`` of the create request; ``ignore`` matched now, by a walk
        that stops at ignored directories."""
        mount: dict[str, Any] = {"source": str(self.source), "dest": self.dest,
                                 "file": self.is_file}
        if self.ignore and not self.is_file:
            mount["exclude"] = ignored_paths(self.source, self.ignore)
        return mount


def local_file(local: Path, remote: str, copy: bool = True) -> LocalFiles | MountedFiles:
    _remote(remote, "add_local_file")
    local = local.expanduser()
    if not local.is_file():
        raise InvalidError(f"add_local_file: {str(local)!r} is not a file")
    if remote.endswith("/"):
        directory, name = remote.rstrip("/") or "/", local.name
    else:
        directory, name = str(Path(remote).parent), Path(remote).name
    what = f"add_local_file {local} {remote}"
    if not copy:
        dest = str(Path(directory) / name)
        check_text(str(local.absolute()), what)
        return MountedFiles(local.absolute(), dest, True, description=what)
    tar = tar_file(local, name)  # read now, as add_local_dir does
    return LocalFiles(directory, what, lambda: tar)


def local_dir(local: Path, remote: str, ignore: IgnoreSpec, copy: bool = True
              ) -> LocalFiles | MountedFiles:
    _remote(remote, "add_local_dir")
    local = local.expanduser()
    if not local.is_dir():
        raise InvalidError(f"add_local_dir: {str(local)!r} is not a directory")
    what = f"add_local_dir {local} {remote}"
    if not copy:
        check_ignore(ignore)
        check_text(str(local.absolute()), what)
        return MountedFiles(local.absolute(), remote.rstrip("/") or "/", False, ignore, what)
    tar = tar_directory(local, ignore)  # read now: the step is what the files are now
    return LocalFiles(remote, what, lambda: tar)


def python_sources(modules: Sequence[str], ignore: IgnoreSpec, copy: bool = True
                   ) -> list[Step | LocalFiles | MountedFiles]:
    """The files of ``modules`` under /root, after a step putting /root on PYTHONPATH
    (first, so that a ``copy=False`` image has no build step after its local files)."""
    if not modules:
        raise InvalidError("add_local_python_source needs at least one module name")
    steps: list[Step | LocalFiles | MountedFiles] = [
        config(env={"PYTHONPATH": f"{PYTHON_SOURCE_DIR}${{PYTHONPATH:+:$PYTHONPATH}}"})]
    for module in modules:
        if not isinstance(module, str) or not module.isidentifier():
            raise InvalidError(f"add_local_python_source: {module!r} is not a module name")
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin in (None, "built-in", "frozen"):
            raise InvalidError(f"add_local_python_source: module {module!r} not found locally")
        if spec.submodule_search_locations:
            package = Path(next(iter(spec.submodule_search_locations)))
            steps.append(local_dir(package, f"{PYTHON_SOURCE_DIR}/{module}", ignore, copy))
        else:
            steps.append(local_file(Path(str(spec.origin)), f"{PYTHON_SOURCE_DIR}/", copy))
    return steps
