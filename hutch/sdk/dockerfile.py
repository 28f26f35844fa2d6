"""Dockerfiles as hutch image steps: ``Image.from_dockerfile`` and ``dockerfile_commands``.

Each instruction becomes one step of the kind the rest of ``Image`` uses, so it is cached
like them (a changed line rebuilds from that line on):

========================  ====================================================================
``FROM``                  a base: ``scratch``, an earlier stage (``AS name`` or its index), an
                          image of this engine (``hutch/...``), else a registry image
``RUN``                   a run step (shell or exec form, ``SHELL``'s shell, build args in its
                          environment, heredocs; ``--mount=type=cache`` kept between builds)
``COPY``/``ADD``          local files from the context (globs, ``.dockerignore``,
                          ``--chown``/``--chmod``; ``ADD``: URLs and local tar archives
                          unpacked), or ``--from=`` a stage or an image
``ENV`` ``WORKDIR``       image settings (``USER``: later steps run as that user)
``USER`` ``ENTRYPOINT``
``CMD`` ``LABEL``
``EXPOSE``
``ARG`` ``SHELL``         read here: values substituted, the shell of later ``RUN`` lines
========================  ====================================================================

Anything else (``HEALTHCHECK``, ``VOLUME``, ``ONBUILD``, ``STOPSIGNAL``, ``RUN
--mount=type=secret``, ...) is an :class:`~hutch.exception.InvalidError` naming its line.
The result is a list of :class:`StagePlan`; :mod:`hutch.sdk.image` makes images of them.
"""

from __future__ import annotations

import io
import platform
import shlex
import tarfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from hutch.exception import InvalidError
from hutch.sdk import imagesteps
from hutch.sdk.dockerparse import DockerIgnore, Instruction, key_values, parse, substitute, words
from hutch.sdk.localfiles import tar_directory, tar_file
from hutch.sdk.secret import Secret

Ignore = Callable[[str], bool]
DEFAULT_SHELL = ["/bin/sh", "-c"]
#: Largest file ``ADD https://...`` downloads.
MAX_ADD_URL = 1 << 30


@dataclass
class StagePlan:
    """One ``FROM`` stage: its base (a base dict, an earlier stage's index, or None for
    the image ``dockerfile_commands`` extends) and its steps."""

    base: dict[str, Any] | int | None
    name: str | None = None
    steps: list[Any] = field(default_factory=list)
    workdir: str = "/"
    shell: list[str] = field(default_factory=lambda: list(DEFAULT_SHELL))
    env: dict[str, str] = field(default_factory=dict)
    args: dict[str, str] = field(default_factory=dict)


@dataclass
class Options:
    context_dir: Path
    ignore: Ignore
    build_args: dict[str, str]
    env: dict[str, str] | None
    secrets: Sequence[Secret]
    #: an image reference -> a base dict (the flag: named by a FROM line, not COPY --from)
    base_for: Callable[[str, bool], dict[str, Any]]


class _AutoDockerIgnore:
    """``ignore``'s default: the ``.dockerignore`` Docker would use (Modal's sentinel)."""

    def __repr__(self) -> str:
        return "hutch.image.AUTO_DOCKERIGNORE"


AUTO_DOCKERIGNORE: Any = _AutoDockerIgnore()


class _Predicate:
    """``ignore=`` given as a predicate on paths (``FilePatternMatcher`` among them)."""

    def __init__(self, check: Callable[[Path], bool]) -> None:
        self.check = check

    def __call__(self, rel: str) -> bool:
        return bool(self.check(Path(rel)))

    def can_prune_directories(self) -> bool:
        prune = getattr(self.check, "can_prune_directories", None)
        return True if prune is None else bool(prune())


def ignore_rules(ignore: Any, context: Path, dockerfile: Path | None) -> Ignore:
    """What COPY leaves out: ``AUTO_DOCKERIGNORE`` (``<Dockerfile>.dockerignore`` or
    ``.dockerignore`` beside the Dockerfile, else ``.dockerignore`` in the context, when
    inside the context), a list of ``.dockerignore`` patterns, or a predicate on paths."""
    if ignore is AUTO_DOCKERIGNORE:
        places = [] if dockerfile is None else [
            dockerfile.parent / f"{dockerfile.name}.dockerignore",
            dockerfile.parent / ".dockerignore"]
        for place in [*places, context / ".dockerignore"]:
            resolved = place.absolute()
            if resolved.is_file() and (resolved.parent == context or context in
                                       resolved.parents):
                return DockerIgnore(resolved.read_text().splitlines())
        return DockerIgnore([])
    if callable(ignore):
        return _Predicate(ignore)
    if isinstance(ignore, str) or not all(isinstance(p, str) for p in ignore):
        raise InvalidError("ignore must be a list of .dockerignore patterns or a predicate")
    return DockerIgnore(list(ignore))


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def plan(text: str, options: Options, extends: bool) -> list[StagePlan]:
    """The stages of ``text``; ``extends``: lines before a ``FROM`` apply to the image
    ``dockerfile_commands`` was called on."""
    platform_name = f"linux/{_arch()}"
    globals_: dict[str, str] = {"TARGETPLATFORM": platform_name, "TARGETOS": "linux",
                                "TARGETARCH": _arch(), "BUILDPLATFORM": platform_name,
                                "BUILDOS": "linux", "BUILDARCH": _arch()}
    stages: list[StagePlan] = [StagePlan(None)] if extends else []
    for inst in parse(text):
        if inst.keyword == "ARG" and (not stages or (extends and len(stages) == 1
                                                     and not stages[0].steps)):
            _arg(inst, globals_, options, globals_)
            if not stages:
                continue
        if inst.keyword == "FROM":
            stages.append(_from(inst, stages, globals_, options))
            continue
        if not stages:
            raise inst.fail("a Dockerfile starts with FROM (or ARG before it)")
        _instruction(inst, stages[-1], stages, globals_, options)
    if not stages:
        raise InvalidError("the Dockerfile has no FROM line")
    return stages


def _arg(inst: Instruction, scope: dict[str, str], options: Options,
         globals_: dict[str, str]) -> None:
    for word in words(inst, {}):
        name, sep, default = word.partition("=")
        if not name.isidentifier():
            raise inst.fail(f"{name!r} is not an argument name")
        if name in options.build_args:
            scope[name] = options.build_args[name]
        elif sep:
            scope[name] = substitute(default, {**globals_, **scope})
        elif name in globals_:
            scope[name] = globals_[name]


def _from(inst: Instruction, stages: list[StagePlan], globals_: dict[str, str],
          options: Options) -> StagePlan:
    for flag, values in inst.flags.items():
        if flag != "platform" or any(substitute(v, globals_) not in (
                f"linux/{_arch()}", "$BUILDPLATFORM", "$TARGETPLATFORM") for v in values):
            raise inst.fail(f"--{flag}={','.join(values)} is not supported (this machine "
                            f"builds linux/{_arch()})")
    parts = words(inst, globals_)
    if len(parts) == 3 and parts[1].lower() == "as":
        name: str | None = parts[2].lower()
    elif len(parts) == 1:
        name = None
    else:
        raise inst.fail("FROM IMAGE [AS NAME]")
    ref = parts[0]
    earlier = _stage_index(ref, stages)
    if earlier is not None:
        parent = stages[earlier]
        return StagePlan(earlier, name, workdir=parent.workdir, shell=list(parent.shell),
                         env=dict(parent.env))
    if ref == "scratch":
        return StagePlan({"kind": "scratch"}, name)
    try:
        return StagePlan(options.base_for(ref, True), name)
    except InvalidError as exc:
        raise inst.fail(str(exc)) from None


def _stage_index(ref: str, stages: list[StagePlan]) -> int | None:
    for index, stage in enumerate(stages):
        if stage.name is not None and stage.name == ref.lower():
            return index
    if ref.isdigit() and int(ref) < len(stages):
        return int(ref)
    return None


def _instruction(inst: Instruction, stage: StagePlan, stages: list[StagePlan],
                 globals_: dict[str, str], options: Options) -> None:
    variables = {**stage.args, **stage.env}
    where = f"Dockerfile:{inst.line} {inst.keyword}"
    if inst.keyword in ("RUN", "COPY", "ADD"):
        {"RUN": _run, "COPY": _copy, "ADD": _copy}[inst.keyword](
            inst, stage, stages, options, where)
    elif inst.keyword == "ARG":
        _arg(inst, stage.args, options, globals_)
    elif inst.keyword == "ENV":
        env = key_values(inst, variables, keep_unknown=True)
        stage.env.update(env)
        stage.steps.append(_config(inst, env=env))
    elif inst.keyword == "WORKDIR":
        path = substitute(inst.args.strip(), variables)
        if not path:
            raise inst.fail("needs a path")
        stage.workdir = str(PurePosixPath(stage.workdir) / path)
        stage.steps.append(_config(inst, workdir=stage.workdir))
    elif inst.keyword == "USER":
        stage.steps.append(_config(inst, user=substitute(inst.args.strip(), variables)))
    elif inst.keyword in ("LABEL", "MAINTAINER"):
        labels = key_values(inst, variables) if inst.keyword == "LABEL" else \
            {"maintainer": inst.args.strip()}
        stage.steps.append(_config(inst, labels=labels))
    elif inst.keyword == "EXPOSE":
        stage.steps.append(_config(inst, exposed_ports=words(inst, variables)))
    elif inst.keyword in ("ENTRYPOINT", "CMD"):
        listed = inst.json_form()
        argv = listed if listed is not None else [*stage.shell, inst.args.strip()]
        stage.steps.append(_config(inst, **{inst.keyword.lower(): argv}))
    elif inst.keyword == "SHELL":
        shell = inst.json_form()
        if not shell:
            raise inst.fail('needs the JSON form, as ["/bin/bash", "-c"]')
        stage.shell = shell
        stage.steps.append(_config(inst, shell=shell))  # later RUN lines use it (engine)
    else:
        raise inst.fail("is not supported by hutch (supported: FROM, RUN, COPY, ADD, ENV, "
                        "ARG, WORKDIR, USER, ENTRYPOINT, CMD, LABEL, SHELL, EXPOSE)")


def _config(inst: Instruction, **settings: Any) -> dict[str, Any]:
    try:
        step = imagesteps.config(**{k: v for k, v in settings.items()
                                    if k in ("env", "workdir", "entrypoint", "cmd")})
    except InvalidError as exc:
        raise inst.fail(str(exc)) from None
    for key in ("user", "labels", "exposed_ports", "shell"):
        if key in settings:
            step[key] = settings[key]
    return step


def _run(inst: Instruction, stage: StagePlan, stages: list[StagePlan], options: Options,
         where: str) -> None:
    caches: list[str] = []
    for flag, values in inst.flags.items():
        for value in values:
            settings = dict(p.partition("=")[::2] for p in value.split(","))
            if flag == "mount" and settings.get("type") == "cache" and (
                    settings.get("target") or settings.get("dst") or settings.get("destination")):
                target = settings.get("target") or settings.get("dst") or settings["destination"]
                caches.append(str(PurePosixPath(stage.workdir) / target))
            elif flag == "network" and value in ("default", "host"):
                pass  # build steps use the host's network
            else:
                raise inst.fail(f"--{flag}={value} is not supported (only "
                                "--mount=type=cache,target=DIR and --network=default)")
    listed = inst.json_form()
    if listed is not None:
        command = shlex.join(listed)
    else:
        text = inst.args.strip()
        if text.startswith("<<") and len(inst.heredocs) == 1 and \
                text.split()[0].strip("<-\"'") == inst.heredocs[0][0]:
            word, text = inst.heredocs[0]  # RUN <<EOF: the heredoc is the script
            if text.startswith("#!"):  # run by its interpreter, as BuildKit does
                interpreter = text.split("\n", 1)[0][2:].strip()
                text = f"{interpreter} <<'{word}'\n{text}{word}"
        else:
            text += "".join(f"\n{body}{word}" for word, body in inst.heredocs)
        command = text  # (run by the image's shell: SHELL set it)
    if not command.strip():
        raise inst.fail("needs a command")
    env = {**stage.args, **(options.env or {})}
    step = imagesteps.run_commands([command], env, options.secrets, False)
    step["description"] = f"{where} {command.splitlines()[0][:200]}"
    if caches:
        step["cache_mounts"] = caches
    stage.steps.append(step)


def _copy(inst: Instruction, stage: StagePlan, stages: list[StagePlan], options: Options,
          where: str) -> None:
    variables = {**stage.args, **stage.env}
    chown = substitute(inst.flags.pop("chown", [""])[-1], variables) or None
    chmod = inst.flags.pop("chmod", [""])[-1]
    source_from = substitute(inst.flags.pop("from", [""])[-1], variables)
    inst.flags.pop("link", None)
    if inst.flags:
        raise inst.fail(f"--{next(iter(inst.flags))} is not supported")
    mode = _mode(inst, chmod)
    if inst.heredocs:  # COPY <<EOF /path: the heredoc is the file
        parts = words(inst, variables)
        sources, dest = [], parts[-1] if parts else ""
    else:
        parts = words(inst, variables)
        if len(parts) < 2:
            raise inst.fail("needs a source and a destination")
        sources, dest = parts[:-1], parts[-1]
    directory = dest.endswith("/") or dest in (".", "..")
    dest = str(PurePosixPath(stage.workdir) / dest)
    if source_from:
        index: int | dict[str, Any] | None = _stage_index(source_from, stages[:-1])
        if index is None:  # an image, not a stage
            try:
                index = options.base_for(source_from, False)
            except InvalidError as exc:
                raise inst.fail(str(exc)) from None
        as_file = len(sources) == 1 and not directory and not any(c in sources[0] for c in "*?[")
        stage.steps.append(imagesteps.StageFiles(
            index, [str(PurePosixPath(stage.workdir) / s) if not s.startswith("/") else s
                    for s in sources], dest, f"{where} --from={source_from} {' '.join(sources)}",
            as_file=as_file, chown=chown))
        return
    tar, as_file = _context_tar(inst, sources, directory, options, mode)
    stage.steps.append(imagesteps.LocalFiles(
        dest, f"{where} {' '.join(sources) or '<<heredoc'} {dest}", lambda: tar,
        as_file=as_file, chown=chown))


def _mode(inst: Instruction, chmod: str) -> int | None:
    if not chmod:
        return None
    try:
        mode = int(chmod, 8)
    except ValueError:
        raise inst.fail(f"--chmod={chmod} is not an octal mode") from None
    if not 0 <= mode <= 0o7777:
        raise inst.fail(f"--chmod={chmod} is not a mode")
    return mode


def _inside(context: Path, rel: str, inst: Instruction) -> Path:
    clean = PurePosixPath("/" + rel)
    if ".." in clean.parts:
        raise inst.fail(f"{rel} is outside the build context")
    path = context / str(clean).lstrip("/")
    real = path.resolve()
    if real != context and context not in real.parents:
        raise inst.fail(f"{rel} leads outside the build context")
    return path


def _sources(inst: Instruction, sources: list[str], options: Options
             ) -> list[tuple[str, Path | bytes, str]]:
    """``(kind, path or data, name)`` for each source: ``file``, ``dir``, ``archive``."""
    context = options.context_dir.resolve()
    found: list[tuple[str, Path | bytes, str]] = []
    for source in sources:
        if inst.keyword == "ADD" and source.startswith(("http://", "https://")):
            name = PurePosixPath(urllib.parse.urlparse(source).path).name or "index.html"
            found.append(("file", _download(inst, source), name))
            continue
        if source.startswith(("http://", "https://", "git@")):
            raise inst.fail(f"{source}: COPY takes files of the context (ADD downloads URLs)")
        rel = str(PurePosixPath("/" + source)).lstrip("/")
        if any(c in rel for c in "*?["):
            matches = [p for p in sorted(context.glob(rel))
                       if not options.ignore(p.relative_to(context).as_posix())]
            if not matches:
                raise inst.fail(f"nothing in the build context matches {source}")
        else:
            path = _inside(context, rel, inst)
            if not path.exists() or (rel and options.ignore(rel)):
                raise inst.fail(f"{source} is not in the build context {context} (or "
                                ".dockerignore leaves it out)")
            matches = [path]
        for path in matches:
            _inside(context, path.relative_to(context).as_posix(), inst)
            if path.is_dir():
                found.append(("dir", path, path.relative_to(context).as_posix()))
            elif inst.keyword == "ADD" and tarfile.is_tarfile(path):
                found.append(("archive", path, path.name))
            else:
                found.append(("file", path, path.name))
    return found


def _download(inst: Instruction, url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read(MAX_ADD_URL + 1)
    except OSError as exc:
        raise inst.fail(f"cannot download {url}: {exc}") from exc
    if len(data) > MAX_ADD_URL:
        raise inst.fail(f"{url} is larger than {MAX_ADD_URL >> 20} MiB")
    return bytes(data)


def _context_tar(inst: Instruction, sources: list[str], directory: bool, options: Options,
                 mode: int | None) -> tuple[bytes, bool]:
    """The files a COPY/ADD takes, as one tar, and whether it is one file for a file path."""
    if inst.heredocs:
        parts: list[tuple[str, Path | bytes, str]] = [
            ("file", body.encode(), word) for word, body in inst.heredocs]
    else:
        parts = _sources(inst, sources, options)
    single = len(parts) == 1 and parts[0][0] == "file" and not any(
        c in s for s in sources for c in "*?[")
    if not directory and not single and (len(parts) > 1 or len(sources) > 1):
        raise inst.fail("with more than one source the destination must be a directory "
                        "ending in /")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, what, name in parts:
            if isinstance(what, bytes):
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(what), 0o644
                _add(tar, info, io.BytesIO(what), mode)
            elif kind == "dir":
                prefix = "" if name == "." else name

                _merge_bytes(tar, tar_directory(what, _Under(options.ignore, prefix)), mode)
            elif kind == "archive":
                with tarfile.open(what) as archive:
                    _merge(tar, archive, mode)
            else:
                _merge_bytes(tar, tar_file(what, name), mode)
    return out.getvalue(), single and not directory


class _Under:
    """The context's ignore rules for the paths of one of its directories."""

    def __init__(self, rules: Ignore, prefix: str) -> None:
        self.rules, self.prefix = rules, prefix

    def __call__(self, rel: Path) -> bool:
        return self.rules(f"{self.prefix}/{rel.as_posix()}".lstrip("/"))

    def can_prune_directories(self) -> bool:
        prune = getattr(self.rules, "can_prune_directories", None)
        return True if prune is None else bool(prune())


def _merge_bytes(tar: tarfile.TarFile, data: bytes, mode: int | None) -> None:
    with tarfile.open(fileobj=io.BytesIO(data)) as other:
        _merge(tar, other, mode)


def _merge(tar: tarfile.TarFile, other: tarfile.TarFile, mode: int | None) -> None:
    for member in other.getmembers():
        data = other.extractfile(member) if member.isreg() else None
        _add(tar, member, data, mode)


def _add(tar: tarfile.TarFile, info: tarfile.TarInfo, data: Any, mode: int | None) -> None:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if mode is not None and not info.issym():
        info.mode = mode
    tar.addfile(info, data)
