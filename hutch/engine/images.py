"""The engine's view of images: resolve a reference to shared layer directories.

Builds run in a worker thread (they take seconds to minutes) under one lock per reference,
so two creates asking for an image that is not built yet build it once.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path

import trio

from hutch.engine.errors import ImageBuildFailed, NotFound
from hutch.imagebuild import debian
from hutch.imagebuild.layout import Image, ImageNotFound, ImageStore

log = logging.getLogger("hutch.images")


class ImageService:
    def __init__(self, data_dir: Path) -> None:
        self.store = ImageStore(data_dir)
        self._locks: defaultdict[str, trio.Lock] = defaultdict(trio.Lock)
        self._resolved: dict[str, Image] = {}

    @property
    def default_ref(self) -> str:
        return debian.base_ref()

    async def ensure_default(self) -> str:
        return await self.build_debian(debian.DEFAULT_PYTHON)

    async def build_debian(self, python_version: str, force: bool = False,
                           log_line: Callable[[str], None] | None = None) -> str:
        """The Debian base image for ``python_version``, built unless cached.

        ``log_line`` receives the build's output on the event loop, line by line.
        """
        ref = debian.base_ref(python_version)

        def forward(line: str) -> None:
            if log_line is not None:
                trio.from_thread.run_sync(log_line, line)

        async with self._locks[ref]:
            if force or self.store.lookup(ref) is None:
                try:
                    await trio.to_thread.run_sync(
                        partial(debian.build_debian_base, self.store, python_version,
                                forward, force))
                except debian.ImageBuildError as exc:
                    raise ImageBuildFailed(str(exc)) from exc
                self._resolved.pop(ref, None)
        return ref

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
        self._resolved[ref] = image
        return image
