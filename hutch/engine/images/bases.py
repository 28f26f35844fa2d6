"""``debian_slim`` bases: Debian with a toolchain, a Python, and Modal's package tools.

A base is three parts, each cached on its own:

1. Debian from mmdebstrap (:mod:`hutch.imagebuild.debian`), with Debian's Python for the
   versions Debian packages (3.11 bookworm, 3.13 trixie, 3.14 forky), without one below
   python-build-standalone's;
2. for the others, and for every ``X.Y.Z``, python-build-standalone's interpreter as one
   layer at ``/usr/local`` (:mod:`hutch.imagebuild.standalone`), shared by every image that
   adds that Python (``from_registry(add_python=...)`` too);
3. one build step, run in a build container like any other: it checks that ``python3`` is
   the version asked for (the first time an archive's interpreter runs, and it runs
   sandboxed), makes ``python``/``pip`` names, and installs Modal's ``pip wheel uv``.

``force_build`` runs that step again (the newest pip, wheel and uv); the Debian tree under
it is built again when its recipe changes (or after ``hutch image rm`` of it), as Debian
under a Docker Hub tag changes only when the tag is rebuilt.

The reference of a base names its version and a digest of the recipe (and of the archive),
so a changed recipe or a newer archive builds anew instead of reusing an older base.
"""

from __future__ import annotations

import hashlib
import shlex
import tempfile
from collections import defaultdict
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

from hutch.api.imagemodels import DEBIAN_PYTHON_SUITES, STANDALONE_SUITE, RunStep
from hutch.engine.errors import ImageBuildFailed
from hutch.engine.kernel import trees
from hutch.imagebuild import debian, standalone
from hutch.imagebuild.layout import ImageStore

LogLine = Callable[[str], None]
#: ``apply(parent_ref, step, ref)``: the image service running a build step.
ApplyStep = Callable[[str, RunStep, str], Awaitable[None]]
DEFAULT_PYTHON = "3.11"
PIP = "python3 -m pip install --no-cache-dir --disable-pip-version-check " \
      "--root-user-action=ignore"
#: Modal's ``debian_slim`` installs ``pip wheel uv`` and answers debconf non-interactively.
TOOLS = [
    f"{PIP} --upgrade --ignore-installed pip wheel uv",  # beside Debian's, not over them
    "echo 'debconf debconf/frontend select Noninteractive' | debconf-set-selections",
]
#: python-build-standalone's ncurses looks for terminfo where it was built (as Modal sets).
TERMINFO = "TERMINFO_DIRS=/etc/terminfo:/lib/terminfo:/usr/share/terminfo:/usr/lib/terminfo"
_LINKS = ("cd /usr/local/bin && for n in python:python3 pip:pip3; do "
          "[ -e \"${n%%:*}\" ] || ln -s \"${n#*:}\" \"${n%%:*}\"; done")


def _check_version(version: str) -> str:
    parts = tuple(int(p) for p in version.split("."))
    code = (f"import sys; v = sys.version_info[:{len(parts)}]; "
            f"assert v == {parts}, f'python3 is {{sys.version}}, not {version}'")
    return f"python3 -c {shlex.quote(code)}"


def tools_step(version: str, standalone_python: bool) -> RunStep:
    commands = [_check_version(version), *([_LINKS] if standalone_python else []), *TOOLS]
    return RunStep(commands=commands, description=f"python {version}: pip wheel uv")


def python_check_step(version: str) -> RunStep:
    """``from_registry(add_python=...)``'s step: the interpreter runs, ``python``/``pip``."""
    return RunStep(commands=[_check_version(version), _LINKS],
                   description=f"add_python {version}")


def _recipe(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def debian_ref(version: str) -> str:
    """The reference of the base for a version Debian packages (``X.Y``)."""
    suite = DEBIAN_PYTHON_SUITES[version]
    step = tools_step(version, False)
    return f"hutch/debian-slim:py{version}-{_recipe(debian.os_ref(suite, True), *step.commands)}"


def default_ref() -> str:
    return debian_ref(DEFAULT_PYTHON)


class PythonBases:
    def __init__(self, store: ImageStore, data_dir: Path) -> None:
        self.store = store
        self.data_dir = data_dir
        #: one build of a Debian tree at a time (3.10, 3.12 and X.Y.Z share trixie's)
        self._os_locks: defaultdict[str, trio.Lock] = defaultdict(trio.Lock)

    async def _os(self, suite: str, with_python: bool, forward: LogLine) -> str:
        async with self._os_locks[debian.os_ref(suite, with_python)]:
            return await trio.to_thread.run_sync(partial(
                debian.build_debian_os, self.store, suite, with_python, forward))

    def is_built(self, version: str) -> bool:
        """Whether the base for ``version`` is in the store (without looking for archives
        of versions Debian does not package: those are built, or found, by :meth:`build`)."""
        return version in DEBIAN_PYTHON_SUITES and self.store.lookup(debian_ref(version)) \
            is not None

    async def build(self, version: str, force: bool, log_line: LogLine,
                    apply: ApplyStep) -> str:
        """The base for ``version``, built unless cached; ``log_line`` is called on the
        event loop."""
        def forward(line: str) -> None:
            trio.from_thread.run_sync(log_line, line)

        try:
            if version in DEBIAN_PYTHON_SUITES:
                ref = debian_ref(version)
                if self.store.lookup(ref) is not None and not force:
                    return ref
                parent = await self._os(DEBIAN_PYTHON_SUITES[version], True, forward)
                step = tools_step(version, False)
                log_line(f"=> {step.description}")
                await apply(parent, step, ref)
                return ref
            return await self._standalone(version, force, log_line, apply)
        except (debian.ImageBuildError, standalone.PythonUnavailable) as exc:
            raise ImageBuildFailed(str(exc)) from exc

    async def _standalone(self, version: str, force: bool, log_line: LogLine,
                          apply: ApplyStep) -> str:
        def forward(line: str) -> None:
            trio.from_thread.run_sync(log_line, line)

        archive = await trio.to_thread.run_sync(
            standalone.locate, version, self.data_dir, forward)
        step = tools_step(version, True)
        os_ref = debian.os_ref(STANDALONE_SUITE, False)
        ref = (f"hutch/debian-slim:py{version}-"
               f"{_recipe(os_ref, archive.sha256, *step.commands)}")
        if self.store.lookup(ref) is not None and not force:
            return ref
        os_ref = await self._os(STANDALONE_SUITE, False, forward)
        parent = await trio.to_thread.run_sync(self.with_python, os_ref, archive)
        log_line(f"=> {step.description}")
        await apply(parent, step, ref)
        return ref

    def python_layer(self, archive: standalone.Archive) -> tuple[dict[str, Any], str]:
        """The layer of ``archive``'s interpreter (unpacked once per archive)."""
        ref = f"hutch/python:{archive.version}-{archive.sha256[:12]}"
        if self.store.lookup(ref) is None:
            work = Path(tempfile.mkdtemp(dir=self.store.tmp, prefix="python-"))
            try:
                layer = self.store.commit_layer_dir(standalone.unpack_to_layer(archive, work))
                self.store.write_image(ref, [layer], {})
            finally:
                trees.remove_tree(work)
        layers, _ = self.store.image_parts(ref)
        return layers[0]

    def with_python(self, parent_ref: str, archive: standalone.Archive) -> str:
        """``parent_ref`` with the archive's Python at /usr/local (Modal's ``add_python``)."""
        layer = self.python_layer(archive)
        ref = f"hutch/step:python-{_recipe(self.store.lookup(parent_ref) or '', layer[1])}"
        if self.store.lookup(ref) is None:
            layers, config = self.store.image_parts(parent_ref)
            cfg = dict(config.get("config", {}))
            env = [e for e in cfg.get("Env", []) if not e.startswith("TERMINFO_DIRS=")]
            cfg["Env"] = [*env, TERMINFO]
            self.store.write_image(ref, [*layers, layer], cfg)
        else:
            self.store.touch(ref)
        return ref
