"""The engine's view of images: resolve a reference to shared layer directories.

Builds run in a worker thread (they take seconds to minutes) under one lock per reference,
so two creates asking for an image that is not built yet build it once.
"""

from __future__ import annotations

import logging
from collections import defaultdict
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
        ref = self.default_ref
        async with self._locks[ref]:
            if self.store.lookup(ref) is None:
                try:
                    await trio.to_thread.run_sync(debian.build_debian_base, self.store)
                except debian.ImageBuildError as exc:
                    raise ImageBuildFailed(str(exc)) from exc
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
