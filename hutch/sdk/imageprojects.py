"""Python projects into images: ``pip_install_from_pyproject``, ``uv_sync`` and
``poetry_install_from_file``, as Modal's ``Image`` has them.

A mixin of :class:`hutch.sdk.image.Image`, built from its own steps: the project's
``pyproject.toml`` (and lock file) are copied into the image, then one command step
installs what they name, so a changed lock file rebuilds from there and a changed source
file (added after, with ``add_local_python_source``) does not.

- ``pip_install_from_pyproject``: ``[project.dependencies]`` (and the optional groups
  asked for), read here with ``tomllib``, installed with pip, as Modal does.
- ``uv_sync``: ``uv sync --frozen --no-install-workspace`` in ``/.uv`` (Modal's place), so
  the environment is ``/.uv/.venv``, first on ``PATH``; uv from the image (the default
  image has it) or ``uv_version`` from PyPI; Pythons are never downloaded (the image's).
- ``poetry_install_from_file``: poetry from PyPI installs the lock into the image's Python
  (``virtualenvs.create false``), without the project itself (``--no-root``).
"""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

from hutch.exception import InvalidError
from hutch.sdk import imagefunction, imagesteps
from hutch.sdk.imagecore import ImageCore
from hutch.sdk.options import env_without_none, reject_unsupported
from hutch.sdk.secret import Secret

UV_ROOT = "/.uv"
POETRY_ROOT = "/.poetry"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _read_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidError(f"{what}: cannot read {str(path)!r}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidError(f"{what}: {str(path)!r} is not valid TOML: {exc}") from exc


def _names(items: object, what: str) -> list[str]:
    if items is None:
        return []
    if not isinstance(items, list) or not all(
            isinstance(i, str) and _NAME.fullmatch(i) for i in items):
        raise InvalidError(f"{what} must be None or a list of names")
    return items


def _env(env: dict[str, str | None] | None) -> dict[str, str]:
    return env_without_none(env or {})


class ProjectSteps(ImageCore):
    """The project part of ``Image``."""

    def pip_install_from_pyproject(
            self, pyproject_toml: str, optional_dependencies: list[str] | None = None, *,
            find_links: str | None = None, index_url: str | None = None,
            extra_index_url: str | None = None, pre: bool = False, extra_options: str = "",
            force_build: bool = False, env: dict[str, str | None] | None = None,
            secrets: Sequence[Secret] | None = None, gpu: str | None = None) -> Self:
        """pip-install the ``[project.dependencies]`` of a local ``pyproject.toml`` and of
        the ``optional_dependencies`` groups named (not the project itself)."""
        reject_unsupported({"gpu_image": gpu}, "Image.pip_install_from_pyproject")
        what = "pip_install_from_pyproject"
        config = _read_toml(Path(pyproject_toml).expanduser(), what)
        project = config.get("project")
        if not isinstance(project, dict) or "dependencies" not in project:
            raise InvalidError(f"{what}: no [project.dependencies] in {pyproject_toml!r} (for "
                               "[tool.poetry.dependencies] use poetry_install_from_file)")
        dependencies = list(project["dependencies"])
        optionals = project.get("optional-dependencies") or {}
        for group in _names(optional_dependencies, "optional_dependencies"):
            dependencies += optionals.get(group, [])
        if not dependencies or not all(isinstance(d, str) and d.strip() and
                                       not d.startswith("-") for d in dependencies):
            raise InvalidError(f"{what}: {pyproject_toml!r} has no dependencies to install "
                               "(or one that is not a requirement string)")
        options = imagesteps.pip_options(find_links, index_url, extra_index_url, pre,
                                         extra_options)
        command = " ".join([imagesteps.PIP, *options, shlex.join(sorted(dependencies))])
        step = imagesteps.run_commands([command], _env(env), list(secrets or ()), force_build)
        step["description"] = f"pip_install_from_pyproject {pyproject_toml}"
        return self._then(step)

    def uv_sync(self, uv_project_dir: str = "./", *, force_build: bool = False,
                groups: list[str] | None = None, extras: list[str] | None = None,
                frozen: bool = True, extra_options: str = "", uv_version: str | None = None,
                env: dict[str, str | None] | None = None,
                secrets: Sequence[Secret] | None = None, gpu: str | None = None) -> Self:
        """The dependencies of a local uv project (``pyproject.toml``, and ``uv.lock``
        when there is one: ``--frozen`` unless ``frozen=False``) in ``/.uv/.venv``, which
        comes first on ``PATH``; the project itself is not installed."""
        reject_unsupported({"gpu_image": gpu}, "Image.uv_sync")
        project = Path(uv_project_dir).expanduser()
        pyproject = project / "pyproject.toml"
        if not pyproject.is_file():
            raise InvalidError(f"uv_sync: expected {str(pyproject)!r} to exist")
        config = _read_toml(pyproject, "uv_sync")
        if "workspace" in (config.get("tool", {}).get("uv", {}) or {}):
            raise InvalidError("uv_sync: uv workspaces are not supported")
        args = [f"--project={UV_ROOT}", "--no-install-workspace", "--compile-bytecode"]
        args += [f"--group={g}" for g in _names(groups, "groups")]
        args += [f"--extra={e}" for e in _names(extras, "extras")]
        image: Self = self._image().add_local_file(pyproject, f"{UV_ROOT}/pyproject.toml",
                                                   copy=True)
        if (project / "uv.lock").is_file():
            image = image._image().add_local_file(project / "uv.lock", f"{UV_ROOT}/uv.lock",
                                                  copy=True)
            if frozen:
                args.append("--frozen")
        args += imagesteps.split_options(extra_options, "uv_sync")
        uv = imagesteps.tool_install("uv", uv_version, "uv_version", present_ok=True)
        sync = (f"cd {UV_ROOT} && UV_PYTHON_DOWNLOADS=never UV_PYTHON_PREFERENCE=only-system "
                f"uv sync {shlex.join(args)}")
        step = imagesteps.run_commands([uv, sync], _env(env), list(secrets or ()),
                                       force_build)
        step["description"] = f"uv_sync {project}"
        return image._then(step)._then(
            imagesteps.config(env={"PATH": f"{UV_ROOT}/.venv/bin:$PATH"}))

    def run_function(self, raw_f: Callable[..., Any], *,
                     env: dict[str, str | None] | None = None,
                     secrets: Sequence[Secret] | None = None,
                     volumes: dict[Any, Any] | None = None,
                     network_file_systems: dict[Any, Any] | None = None,
                     gpu: Any = None, cpu: float | None = None, memory: int | None = None,
                     timeout: int = 3600, cloud: str | None = None,
                     region: str | Sequence[str] | None = None, force_build: bool = False,
                     args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None,
                     include_source: bool = True) -> Self:
        """Run ``raw_f(*args, **kwargs)`` in the image's build with its Python; what it
        writes becomes a layer (:mod:`hutch.sdk.imagefunction` says what it may use).
        ``cpu``, ``memory``, ``timeout``, ``cloud`` and ``region`` are placement hints
        a local build has no use for."""
        reject_unsupported({"gpu_image": gpu, "build_volumes": volumes,
                            "network_file_systems": network_file_systems},
                           "Image.run_function")
        run = imagefunction.command(raw_f, tuple(args), dict(kwargs or {}), include_source)
        step = imagesteps.run_commands([run], _env(env), list(secrets or ()), force_build)
        step["description"] = f"run_function {getattr(raw_f, '__qualname__', raw_f)}"
        return self._then(step)

    def pip_install_private_repos(self, *repositories: str, git_user: str,
                                  find_links: str | None = None, index_url: str | None = None,
                                  extra_index_url: str | None = None, pre: bool = False,
                                  extra_options: str = "", gpu: str | None = None,
                                  env: dict[str, str | None] | None = None,
                                  secrets: Sequence[Secret] | None = None,
                                  force_build: bool = False) -> Self:
        """pip-install packages from private GitHub or GitLab repositories
        (``github.com/org/repo@ref``, ``#subdirectory=``), logging in as ``git_user`` with
        ``GITHUB_TOKEN``/``GITLAB_TOKEN`` from ``secrets`` (never part of the step's key or
        log: the URL names the variable, the shell expands it)."""
        reject_unsupported({"gpu_image": gpu}, "Image.pip_install_private_repos")
        if not secrets:
            raise InvalidError("No secrets provided to function. Installing private packages "
                               "requires tokens to be passed via Secret objects.")
        if not isinstance(git_user, str) or not _NAME.fullmatch(git_user):
            raise InvalidError("git_user must be a user name")
        urls, invalid = [], []
        for repo in repositories:
            host = repo.split("/", 1)[0] if isinstance(repo, str) else ""
            token = {"github.com": "GITHUB_TOKEN", "gitlab.com": "GITLAB_TOKEN"}.get(host)
            if token is None or any(c.isspace() or c in "'\"$`\\;&|<>" for c in repo):
                invalid.append(repo)
            else:
                urls.append(f'"git+https://{git_user}:${token}@{repo}"')
        if invalid or not urls:
            raise InvalidError(f"{len(invalid)} out of {len(repositories)} given repository "
                               f"refs are invalid. Invalid refs: {invalid}. ")
        checks = [f'[ -n "${{{token}:-}}" ] || {{ echo "{token} is not set by the secrets '
                  f'given" >&2; exit 1; }}' for token in ("GITHUB_TOKEN", "GITLAB_TOKEN")
                  if any(f"${token}@" in u for u in urls)]
        options = imagesteps.pip_options(find_links, index_url, extra_index_url, pre,
                                         extra_options)
        git = (f"command -v git >/dev/null || ({imagesteps.APT} update -q && "
               f"{imagesteps.APT} install -y -q --no-install-recommends git)")
        step = imagesteps.run_commands(
            [*checks, git, " ".join([imagesteps.PIP, *options, *urls])], _env(env),
            list(secrets), force_build)
        step["description"] = f"pip_install_private_repos {' '.join(repositories)}"
        return self._then(step)

    def poetry_install_from_file(
            self, poetry_pyproject_toml: str, poetry_lockfile: str | None = None, *,
            ignore_lockfile: bool = False, force_build: bool = False,
            with_: list[str] | None = None, without: list[str] | None = None,
            only: list[str] | None = None, poetry_version: str | None = "latest",
            old_installer: bool = False, env: dict[str, str | None] | None = None,
            secrets: Sequence[Secret] | None = None, gpu: str | None = None) -> Self:
        """Install a poetry project's locked dependencies into the image's Python (not the
        project itself); ``poetry.lock`` beside the ``pyproject.toml`` unless named, or
        none with ``ignore_lockfile``."""
        reject_unsupported({"gpu_image": gpu, "old_installer": old_installer},
                           "Image.poetry_install_from_file")
        pyproject = Path(poetry_pyproject_toml).expanduser()
        if not pyproject.is_file():
            raise InvalidError(f"poetry_install_from_file: {str(pyproject)!r} not found")
        _read_toml(pyproject, "poetry_install_from_file")
        image: Self = self._image().add_local_file(pyproject, f"{POETRY_ROOT}/pyproject.toml",
                                                   copy=True)
        if not ignore_lockfile:
            lock = Path(poetry_lockfile).expanduser() if poetry_lockfile else \
                pyproject.parent / "poetry.lock"
            if not lock.is_file():
                raise InvalidError(f"poetry_install_from_file: no lock file {str(lock)!r} "
                                   "(pass ignore_lockfile=True to resolve at build time)")
            image = image._image().add_local_file(lock, f"{POETRY_ROOT}/poetry.lock",
                                                  copy=True)
        poetry = imagesteps.tool_install(
            "poetry", None if poetry_version == "latest" else poetry_version,
            "poetry_version", present_ok=False)
        args = ["install", "--no-root", "--no-interaction"]
        for flag, groups in (("--with", with_), ("--without", without), ("--only", only)):
            names = _names(groups, flag.lstrip("-"))
            if names:
                args.append(f"{flag}={','.join(names)}")
        install = (f"cd {POETRY_ROOT} && POETRY_VIRTUALENVS_CREATE=false "
                   f"poetry {shlex.join(args)}")
        step = imagesteps.run_commands([poetry, install], _env(env), list(secrets or ()),
                                       force_build)
        step["description"] = f"poetry_install_from_file {pyproject}"
        return image._then(step)
