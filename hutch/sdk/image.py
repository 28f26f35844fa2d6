"""``hutch.Image``: an immutable, declarative image, built (and cached) by the engine.

Each method returns a new ``Image`` with one more step, Modal-style::

    image = (hutch.Image.debian_slim().apt_install("jq").pip_install("six")
             .env({"PATH": "/opt/bin:$PATH"}).workdir("/app").add_local_dir("src", "/app"))

Arguments are checked here, before anything runs.  Building sends the steps to the engine
(``POST /v1/images/build``), which runs only the steps it has not cached and streams its
progress; local files travel as a tar uploaded once by content digest.  An image remembers
its reference after the first build in this process.  ``HUTCH_FORCE_BUILD=1`` in the
environment rebuilds every step of every image (like ``MODAL_FORCE_BUILD``).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from hutch.api import urls
from hutch.exception import EngineError, InvalidError
from hutch.sdk import imagebases, imagesteps
from hutch.sdk.imageconda import CondaSteps
from hutch.sdk.imagedocker import DockerfileSources
from hutch.sdk.imagenames import NamedImages
from hutch.sdk.imageprojects import ProjectSteps
from hutch.sdk.localfiles import IgnoreSpec, upload_context
from hutch.sdk.localobject import LocalObject
from hutch.sdk.options import check_text, reject_unsupported, shown
from hutch.sdk.output import BuildDisplay
from hutch.sdk.pending import ImagePending
from hutch.sdk.secret import Secret
from hutch.sdk.syncbridge import synchronize
from hutch.sdk.transport import client

ImageStep = (imagesteps.Step | imagesteps.LocalFiles | imagesteps.StageFiles
             | imagesteps.MountedFiles)
#: Modal's words for a build step after ``copy=False`` local files.
AFTER_MOUNTS = (
    "An image tried to run a build step after using `image.add_local_*` to include local "
    "files.\n\nRun `image.add_local_*` commands last in your image build to avoid rebuilding "
    "images with every local file change. hutch will then add these files to sandboxes on "
    "startup instead, saving build time.\nIf you need to run other build steps after adding "
    "local files, set `copy=True` to copy the files directly into the image, at the expense "
    "of some added build time.")
MAX_REF_LENGTH = imagebases.MAX_REF_LENGTH


class Image(DockerfileSources, ProjectSteps, CondaSteps, NamedImages, ImagePending,
            LocalObject):
    """A sandbox image; start from :meth:`debian_slim` (or :meth:`from_id`) and add steps."""

    def __init__(self, base: dict[str, Any], steps: tuple[ImageStep, ...] = (), *,
                 force_build: bool = False, ref: str | None = None) -> None:
        super().__init__(base, steps, force_build=force_build, ref=ref)
        #: what failed in ``with image.imports():`` blocks
        self.import_failures: list[Exception] = []

    # bases --------------------------------------------------------------------------------
    @staticmethod
    def debian_slim(python_version: str | None = None, force_build: bool = False) -> Image:
        """Debian with Python 3.10 to 3.14 (``"3.12"``, or exactly ``"3.12.7"``), a C, C++
        and Fortran toolchain, pip, wheel and uv, as Modal's default image.

        Debian's own Python where Debian packages the version (3.11 bookworm, 3.13 trixie,
        3.14 forky); python-build-standalone's on trixie for the others and for every
        ``X.Y.Z`` (downloaded once; docs/images.md says how to provide it offline).  The
        default is this interpreter's version, or 3.11 where hutch has no such base.
        """
        return Image(imagebases.debian_slim(python_version), force_build=bool(force_build))

    @staticmethod
    def from_id(image_id: str, client: Any = None) -> Image:
        """An image the engine already has, by its reference (``hutch image ls``)."""
        reject_unsupported({"client": client}, "Image.from_id")
        return Image(imagebases.from_id(image_id))

    @staticmethod
    def from_registry(tag: str, secret: Secret | None = None, *,
                      setup_dockerfile_commands: Sequence[str] = (), force_build: bool = False,
                      add_python: str | None = None, **kwargs: Any) -> Image:
        """An image from a registry (``docker.io/library/alpine:3.20``), pulled with skopeo.

        ``secret`` holds ``REGISTRY_USERNAME`` and ``REGISTRY_PASSWORD`` (or Amazon's or
        Google's keys, as :meth:`from_aws_ecr` and :meth:`from_gcp_artifact_registry` take
        them).  Registries on localhost/127.0.0.1 are reached over plain HTTP.
        ``add_python``: python-build-standalone's Python of that series at /usr/local.
        """
        imagebases.reject_kwargs(kwargs, "Image.from_registry")
        return Image(imagebases.registry(
            tag, secret, force_build=force_build, add_python=add_python,
            setup_dockerfile_commands=setup_dockerfile_commands))

    @staticmethod
    def from_aws_ecr(tag: str, secret: Secret | None = None, *,
                     setup_dockerfile_commands: list[str] | None = None,
                     force_build: bool = False, add_python: str | None = None,
                     **kwargs: Any) -> Image:
        """An image from Amazon ECR: ``secret`` holds ``AWS_ACCESS_KEY_ID``,
        ``AWS_SECRET_ACCESS_KEY`` and ``AWS_REGION``, exchanged by the engine for a
        registry token when it pulls."""
        imagebases.reject_kwargs(kwargs, "Image.from_aws_ecr")
        return Image(imagebases.registry(
            tag, secret, force_build=force_build, add_python=add_python,
            setup_dockerfile_commands=setup_dockerfile_commands, auth="aws",
            where="from_aws_ecr"))

    @staticmethod
    def from_gcp_artifact_registry(tag: str, secret: Secret | None = None, *,
                                   setup_dockerfile_commands: list[str] | None = None,
                                   force_build: bool = False, add_python: str | None = None,
                                   **kwargs: Any) -> Image:
        """An image from Google's Artifact Registry: ``secret`` holds a service account's
        key as ``SERVICE_ACCOUNT_JSON`` (the registry's ``_json_key`` login)."""
        imagebases.reject_kwargs(kwargs, "Image.from_gcp_artifact_registry")
        return Image(imagebases.registry(
            tag, secret, force_build=force_build, add_python=add_python,
            setup_dockerfile_commands=setup_dockerfile_commands, auth="gcp",
            where="from_gcp_artifact_registry"))

    @staticmethod
    def from_oci_layout(path: str | os.PathLike[str], tag: str | None = None) -> Image:
        """An image from an OCI image layout directory (``tag``: its ref name, when it
        holds several)."""
        return Image._from_oci(path, tag, archive=False)

    @staticmethod
    def from_oci_archive(path: str | os.PathLike[str], tag: str | None = None) -> Image:
        """An image from an OCI archive (a tar of a layout, as ``hutch image export`` and
        ``skopeo copy ... oci-archive:`` write)."""
        return Image._from_oci(path, tag, archive=True)

    @staticmethod
    def _from_oci(path: str | os.PathLike[str], tag: str | None, archive: bool) -> Image:
        local = Path(path).expanduser().absolute()
        if not (local.is_file() if archive else (local / "index.json").is_file()):
            raise InvalidError(f"no OCI {'archive' if archive else 'layout'} at {str(local)!r}")
        if tag is not None and (not isinstance(tag, str) or (":" in tag and archive is None)):
            raise InvalidError("tag must be a string")
        base: dict[str, Any] = {"kind": "from_oci", "archive": archive,
                                "path": check_text(str(local), f"the path {shown(str(local))}")}
        if tag is not None:
            base["tag"] = check_text(tag, f"tag {shown(tag)}")
        return Image(base)

    # packages -----------------------------------------------------------------------------
    def apt_install(self, *packages: str | list[str], force_build: bool = False,
                    env: dict[str, str] | None = None, secrets: Sequence[Secret] = (),
                    gpu: Any = None) -> Image:
        """Install Debian packages with apt-get."""
        reject_unsupported({"gpu_image": gpu}, "Image.apt_install")
        return self._then(imagesteps.apt_install(packages, force_build, env, secrets))

    def pip_install(self, *packages: str | list[str], find_links: str | None = None,
                    index_url: str | None = None, extra_index_url: str | None = None,
                    pre: bool = False, extra_options: str = "", force_build: bool = False,
                    env: dict[str, str] | None = None, secrets: Sequence[Secret] = (),
                    gpu: Any = None) -> Image:
        """Install Python packages with pip."""
        reject_unsupported({"gpu_image": gpu}, "Image.pip_install")
        return self._then(imagesteps.pip_install(
            packages, find_links=find_links, index_url=index_url,
            extra_index_url=extra_index_url, pre=pre, extra_options=extra_options,
            force_build=force_build, env=env, secrets=secrets))

    def pip_install_from_requirements(
            self, requirements_txt: str, find_links: str | None = None, *,
            index_url: str | None = None, extra_index_url: str | None = None,
            pre: bool = False, extra_options: str = "", force_build: bool = False,
            env: dict[str, str] | None = None, secrets: Sequence[Secret] = (),
            gpu: Any = None) -> Image:
        """Install the requirements of a local ``requirements.txt`` with pip."""
        reject_unsupported({"gpu_image": gpu}, "Image.pip_install_from_requirements")
        path = Path(requirements_txt).expanduser()
        if not path.is_file():
            raise InvalidError(f"requirements file {requirements_txt!r} not found")
        remote = "/.hutch/requirements.txt"
        files = self.add_local_file(path, remote, copy=True)
        return files._then(imagesteps.pip_install(
            (), requirements=remote, find_links=find_links, index_url=index_url,
            extra_index_url=extra_index_url, pre=pre, extra_options=extra_options,
            force_build=force_build, env=env, secrets=secrets))

    def uv_pip_install(self, *packages: str | list[str],
                       requirements: Sequence[str] | None = None,
                       index_url: str | None = None, extra_index_url: str | None = None,
                       find_links: str | None = None, pre: bool = False,
                       extra_options: str = "", force_build: bool = False,
                       uv_version: str | None = None, env: dict[str, str] | None = None,
                       secrets: Sequence[Secret] = (), gpu: Any = None) -> Image:
        """Install Python packages with uv (installed with pip first); ``requirements``:
        local requirements files, copied into the image and installed."""
        reject_unsupported({"gpu_image": gpu}, "Image.uv_pip_install")
        if isinstance(requirements, str) or not isinstance(requirements, Sequence | None):
            raise InvalidError("requirements must be a list of paths")
        image, remotes = self, []
        for number, local in enumerate(requirements or ()):
            path = Path(local).expanduser()
            if not path.is_file():
                raise InvalidError(f"requirements file {local!r} not found")
            remotes.append(f"/.hutch/uv-requirements-{number}.txt")
            image = image.add_local_file(path, remotes[-1], copy=True)
        return image._then(imagesteps.uv_pip_install(
            packages, index_url=index_url, extra_index_url=extra_index_url,
            find_links=find_links, pre=pre, extra_options=extra_options,
            force_build=force_build, env=env, secrets=secrets, requirements=remotes,
            uv_version=uv_version))

    def run_commands(self, *commands: str | list[str], env: dict[str, str] | None = None,
                     secrets: Sequence[Secret] = (), volumes: Mapping[str, Any] | None = None,
                     gpu: Any = None, force_build: bool = False) -> Image:
        """Run shell commands, in order; a failing one fails the build."""
        reject_unsupported({"gpu_image": gpu, "build_volumes": volumes}, "Image.run_commands")
        return self._then(imagesteps.run_commands(commands, env, secrets, force_build))

    # settings -----------------------------------------------------------------------------
    def env(self, vars: dict[str, str]) -> Image:
        """Set environment variables; ``$VAR`` in a value expands the image's current one."""
        if not isinstance(vars, dict):
            raise InvalidError("Image.env needs a dict of str to str")
        return self._then(imagesteps.config(env=vars))

    def workdir(self, path: str | os.PathLike[str]) -> Image:
        """The working directory of later steps and of sandboxes."""
        return self._then(imagesteps.config(workdir=str(path)))

    def entrypoint(self, entrypoint_commands: list[str]) -> Image:
        """What a sandbox runs (before its arguments, or before ``cmd`` without any)."""
        if not isinstance(entrypoint_commands, list):
            raise InvalidError("Image.entrypoint needs a list of strings")
        return self._then(imagesteps.config(entrypoint=entrypoint_commands))

    def cmd(self, cmd: list[str]) -> Image:
        """What a sandbox created without arguments runs (after the entrypoint)."""
        if not isinstance(cmd, list):
            raise InvalidError("Image.cmd needs a list of strings")
        return self._then(imagesteps.config(cmd=cmd))

    # files --------------------------------------------------------------------------------
    def add_local_file(self, local_path: str | Path, remote_path: str, *,
                       copy: bool = False) -> Image:
        """One local file at ``remote_path`` (absolute; ending in ``/`` = into that
        directory): taken from the host when each sandbox starts (``copy=False``, Modal's
        default; no build step may follow) or copied into a layer (``copy=True``)."""
        return self._then(imagesteps.local_file(Path(local_path), remote_path, bool(copy)))

    def add_local_dir(self, local_path: str | Path, remote_path: str, *, copy: bool = False,
                      ignore: IgnoreSpec = ()) -> Image:
        """A local directory's contents at ``remote_path``, from the host when each sandbox
        starts (``copy=False``) or copied into a layer (``copy=True``); ``ignore`` is a list
        of glob patterns (matched against paths relative to the directory) or a predicate."""
        return self._then(imagesteps.local_dir(Path(local_path), remote_path, ignore,
                                               bool(copy)))

    def add_local_python_source(self, *modules: str, copy: bool = False,
                                ignore: IgnoreSpec = imagesteps.PYTHON_IGNORE) -> Image:
        """Importable local modules or packages (found like ``import`` finds them) in
        ``/root``, put on ``PYTHONPATH``; ``copy`` as for :meth:`add_local_dir`."""
        image = self
        for step in imagesteps.python_sources(modules, ignore, bool(copy)):
            image = image._then(step)
        return image

    def _mounts(self) -> list[imagesteps.MountedFiles]:
        return [s for s in self._steps if isinstance(s, imagesteps.MountedFiles)]

    # building -----------------------------------------------------------------------------
    @property
    def object_id(self) -> str | None:
        """The engine's reference of this image once it has been built, else None."""
        return self._ref

    @synchronize
    async def build(self, app: Any = None) -> Image:
        """Build the image now (or find it cached); returns the image itself."""
        await self.resolve()
        return self

    @synchronize
    async def hydrate(self, client: Any = None) -> Image:
        """Modal's way to load an image's metadata: here it builds the image (or finds it
        cached), so that ``object_id`` is known; returns the image itself."""
        reject_unsupported({"client": client}, "Image.hydrate")
        await self.resolve()
        return self

    def _force(self) -> bool:
        return self._force_build or os.environ.get("HUTCH_FORCE_BUILD", "") not in ("", "0")

    async def resolve(self) -> str:
        """The image's reference, building what is not cached."""
        force = self._force()
        if self._ref is not None and not force:
            return self._ref
        mounted = False
        for step in self._steps:
            if isinstance(step, imagesteps.MountedFiles):
                mounted = True
            elif mounted and not (isinstance(step, dict) and step.get("kind") == "config"):
                raise InvalidError(AFTER_MOUNTS)
        steps = [await _wire_step(step) for step in self._steps
                 if not isinstance(step, imagesteps.MountedFiles)]
        body = {"base": self._base, "steps": steps, "force_build": force}
        ref: str | None = None
        with BuildDisplay(self._describe()) as display:
            async for event in client().stream_events(urls.IMAGES_BUILD, method="POST",
                                                      json_body=body):
                if "log" in event:
                    display.line(str(event["log"]))
                elif "step" in event:
                    display.step(event)
                elif "ref" in event:
                    ref = str(event["ref"])
            if ref is None:
                raise EngineError("the engine ended the image build without a result")
            display.done(ref)
        self._ref = ref
        self._force_build = False
        return ref

    def _describe(self) -> str:
        base = ", ".join(f"{k}={v}" for k, v in self._base.items() if k != "kind")
        more = f" + {len(self._steps)} steps" if self._steps else ""
        return f"{self._base['kind']}({base}){more}"

    def pipe(self, func: Callable[..., Image], *args: Any, **kwargs: Any) -> Image:
        """``func(self, *args, **kwargs)``: a reusable piece of a recipe, in the chain."""
        return func(self, *args, **kwargs)

    @contextlib.contextmanager
    def imports(self) -> Iterator[None]:
        """``with image.imports(): import torch``: in Modal, imports that only work inside
        the image's containers, where Functions run; hutch runs no Functions, so a failing
        import here is kept (``import_failures``) rather than raised, as Modal keeps it
        outside its containers (a warning for an error other than ImportError)."""
        try:
            yield
        except Exception as exc:
            self.import_failures.append(exc)
            if not isinstance(exc, ImportError):
                warnings.warn(f"Warning: caught a non-ImportError exception in an `imports()`"
                              f" block: {exc!r}", stacklevel=3)

    def __repr__(self) -> str:
        return f"Image({self._ref or self._describe()})"


async def _wire_step(step: ImageStep) -> dict[str, Any]:
    """The step as the engine takes it: local files become an uploaded context digest,
    another stage's files name that stage's image, built first."""
    if isinstance(step, imagesteps.LocalFiles):
        wire: dict[str, Any] = {"kind": "copy", "dest": step.dest,
                                "description": step.description,
                                "context": await upload_context(step.make_tar)}
    elif isinstance(step, imagesteps.StageFiles):
        wire = {"kind": "copy_from", "image": await step.image.resolve(),
                "sources": step.sources, "dest": step.dest, "description": step.description}
    elif isinstance(step, imagesteps.MountedFiles):
        raise AssertionError("local files taken at start are no build step")
    else:
        return dict(step)
    if step.as_file:
        wire["as_file"] = True
    if step.chown:
        wire["chown"] = step.chown
    return wire


def resolves_directly(image: object) -> bool:
    """Whether resolving ``image`` needs nothing but the engine's answers, so that a blocking
    ``Sandbox.create`` with it can be a direct call (see ``syncbridge``): no image (the
    default), one resolved before, or one without local files to upload."""
    if not isinstance(image, Image):
        return image is None
    return (image._ref is not None and not image._force()) or not any(
        isinstance(step, imagesteps.LocalFiles | imagesteps.StageFiles)
        for step in image._steps)
