"""The engine's view of images: resolve a reference to shared layer directories.

Builds run in a worker thread (they take seconds to minutes) under one lock per reference,
so two creates asking for an image that is not built yet build it once.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path

import trio

from hutch.api.imagemodels import (
    BuildImageRequest,
    CopyFromStep,
    DebianSlimStep,
    FromIdStep,
    FromOCIStep,
    FromRegistryStep,
    RunStep,
    ScratchStep,
)
from hutch.engine.errors import ImageBuildFailed, Invalid, NotFound
from hutch.engine.images import bases
from hutch.engine.images.builder import (
    Builder,
    Emit,
    describe,
    secret_salt,
    step_key,
    step_ref,
)
from hutch.imagebuild import standalone
from hutch.imagebuild.importer import ImportFailed, import_image, skopeo_source
from hutch.imagebuild.layout import Image, ImageNotFound, ImageStore
from hutch.imagebuild.registryauth import RegistryLoginFailed, ecr_login

log = logging.getLogger("hutch.images")
#: The empty image ``FROM scratch`` starts from.
SCRATCH_REF = "hutch/scratch:latest"


class ImageService:
    def __init__(self, data_dir: Path) -> None:
        self.store = ImageStore(data_dir)
        self._locks: defaultdict[str, trio.Lock] = defaultdict(trio.Lock)
        self._resolved: dict[str, Image] = {}
        self.builder: Builder | None = None
        self.contexts = data_dir / "contexts"
        self.data_dir = data_dir
        self._salt: bytes | None = None
        self.bases = bases.PythonBases(self.store, data_dir)

    @property
    def default_ref(self) -> str:
        return bases.default_ref()

    async def ensure_default(self) -> str:
        ref = bases.default_ref()
        if ref in self._resolved:  # built and resolved before (resolve re-checks its layers)
            return ref
        return await self.build_debian(bases.DEFAULT_PYTHON)

    async def build_debian(self, python_version: str, force: bool = False,
                           log_line: Callable[[str], None] | None = None) -> str:
        """The ``debian_slim`` base image for ``python_version``, built unless cached.

        ``log_line`` receives the build's output on the event loop, line by line.
        """
        def forward(line: str) -> None:
            if log_line is not None:
                log_line(line)

        async def apply(parent: str, step: RunStep, ref: str) -> None:
            if self.builder is None:
                raise ImageBuildFailed("this engine cannot run build steps")
            await self.builder.apply(1, parent, step, ref, lambda e: forward(str(e["log"]))
                                     if "log" in e else None)
            self._resolved.pop(ref, None)

        async with self._locks[f"debian_slim:{python_version}"]:
            return await self.bases.build(python_version, force, forward, apply)

    def enable_builds(self, builder: Builder) -> None:
        self.builder = builder
        self.contexts = builder.contexts

    async def build(self, req: BuildImageRequest, emit: Emit) -> str:
        """Build ``req`` step by step (cached steps are skipped); returns the image's ref.

        ``emit`` receives the progress and log events of the build stream.
        """
        total = 1 + len(req.steps)
        force_all = req.force_build
        base = req.base
        if isinstance(base, DebianSlimStep):
            emit({"step": 1, "of": total, "description": f"debian_slim {base.python_version}",
                  "cached": self.bases.is_built(base.python_version) and not force_all})
            ref = await self.build_debian(base.python_version, force_all,
                                          lambda line: emit({"log": line}))
        elif isinstance(base, FromIdStep):
            emit({"step": 1, "of": total, "description": f"from_id {base.ref}",
                  "cached": True})
            ref = base.ref
            digest = self.store.lookup(ref)
            if digest is None:
                raise NotFound(f"image {ref!r} not found")
        elif isinstance(base, ScratchStep):
            emit({"step": 1, "of": total, "description": "scratch", "cached": True})
            ref = SCRATCH_REF
            if self.store.lookup(ref) is None:
                await trio.to_thread.run_sync(self.store.write_image, ref, [], {})
        else:
            ref = await self._import(base, total, force_all, emit)
        for number, step in enumerate(req.steps, start=2):
            # Keyed on what the parent *is* (its manifest digest), so a parent that was
            # rebuilt (forced, or a new base) rebuilds everything after it.
            parent_digest = self.store.lookup(ref)
            if parent_digest is None:
                raise NotFound(f"image {ref!r} vanished during the build")
            if self._salt is None:
                self._salt = secret_salt(self.data_dir)
            keyed = step
            if isinstance(step, CopyFromStep):  # keyed on what the source image *is*
                source_digest = self.store.lookup(step.image)
                if source_digest is None:
                    raise NotFound(f"image {step.image!r} not found")
                keyed = step.model_copy(update={"image": source_digest})
            target = step_ref(step_key(parent_digest, keyed, self._salt))
            forced = force_all or (isinstance(step, RunStep) and step.force_build)
            async with self._locks[target]:
                cached = self.store.lookup(target) is not None and not forced
                if cached:
                    self.store.touch(target)  # (kept by `prune --cache --older-than`)
                emit({"step": number, "of": total, "description": describe(step),
                      "cached": cached})
                if not cached:
                    if self.builder is None:
                        raise ImageBuildFailed("this engine cannot run build steps")
                    # (a copy from another image reads the image it was keyed on: its digest,
                    # even if its name has moved on since)
                    await self.builder.apply(number, ref, keyed, target, emit)
                    self._resolved.pop(target, None)
            ref = target
        return ref

    async def _import(self, base: FromRegistryStep | FromOCIStep, total: int, force: bool,
                      emit: Emit) -> str:
        """A registry image or OCI layout/archive, copied in with skopeo unless cached."""
        if isinstance(base, FromRegistryStep):
            source = skopeo_source("registry", base.ref)
            key = f"from_registry:{base.ref}"  # add_python is a step of its own after
            force = force or base.force_build
            credentials = base.credentials
        else:
            path = Path(base.path)
            index = path if base.archive else path / "index.json"
            try:
                fingerprint = await trio.to_thread.run_sync(_fingerprint, index)
            except OSError as exc:
                raise Invalid(f"no OCI {'archive' if base.archive else 'layout'} at "
                              f"{base.path}: {exc.strerror}") from exc
            location = base.path + (f":{base.tag}" if base.tag else "")
            source = skopeo_source("oci_archive" if base.archive else "oci_layout", location)
            key = f"from_oci:{location}:{fingerprint}"
            credentials = None
        ref = step_ref(hashlib.sha256(key.encode()).hexdigest())
        async with self._locks[ref]:
            cached = self.store.lookup(ref) is not None and not force
            if cached:
                self.store.touch(ref)
            emit({"step": 1, "of": total, "description": f"import {source}", "cached": cached})
            if not cached:
                def log_line(line: str) -> None:
                    trio.from_thread.run_sync(emit, {"log": line})

                try:
                    if isinstance(base, FromRegistryStep) and base.auth == "aws" and \
                            credentials:
                        credentials = await trio.to_thread.run_sync(ecr_login, credentials)
                    await trio.to_thread.run_sync(partial(
                        import_image, self.store, source, ref, log_line, credentials))
                except (ImportFailed, RegistryLoginFailed) as exc:
                    raise ImageBuildFailed(str(exc)) from exc
                self._resolved.pop(ref, None)
        if isinstance(base, FromRegistryStep) and base.add_python:
            ref = await self._add_python(ref, base.add_python, emit)
        return ref

    async def _add_python(self, ref: str, series: str, emit: Emit) -> str:
        """``ref`` with python-build-standalone's ``series`` at /usr/local (as Modal's
        ``add_python``), checked by running it, and ``python``/``pip`` names."""
        def log_line(line: str) -> None:
            trio.from_thread.run_sync(emit, {"log": line})

        try:
            archive = await trio.to_thread.run_sync(
                standalone.locate, series, self.data_dir, log_line)
            parent = await trio.to_thread.run_sync(self.bases.with_python, ref, archive)
        except standalone.PythonUnavailable as exc:
            raise ImageBuildFailed(str(exc)) from exc
        step = bases.python_check_step(series)
        target = step_ref(step_key(self.store.lookup(parent) or "", step))
        async with self._locks[target]:
            if self.store.lookup(target) is None:
                if self.builder is None:
                    raise ImageBuildFailed("this engine cannot run build steps")
                await self.builder.apply(1, parent, step, target, emit)
            else:
                self.store.touch(target)
        return target

    def forget(self, ref: str) -> None:
        """Drop what is remembered of ``ref`` (it was untagged)."""
        self._resolved.pop(ref, None)

    async def resolve(self, ref: str | None) -> Image:
        if ref is None:
            ref = await self.ensure_default()
        cached = self._resolved.get(ref)
        if cached is not None and all(d.exists() for d in cached.layer_dirs):
            return cached
        async with self._locks[ref]:
            try:
                image = await trio.to_thread.run_sync(self.store.resolve, ref)
            except ImageNotFound as exc:
                raise NotFound(f"image {ref!r} not found") from exc
            except (ImportFailed, OSError, ValueError, KeyError) as exc:
                # a layer that cannot be unpacked (again) from its blob: the sandbox is
                # refused with the reason rather than left to fail later
                raise ImageBuildFailed(f"image {ref!r} cannot be used: {exc}") from exc
        self._resolved[ref] = image
        return image


def _fingerprint(path: Path) -> str:
    """The sha256 of a regular file, read in a worker thread: opened without blocking
    (a FIFO named as an OCI layout must not hold the engine), refused unless regular."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        sha = hashlib.sha256()
        while chunk := f.read(1 << 20):
            sha.update(chunk)
        return sha.hexdigest()
