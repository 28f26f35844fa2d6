"""What every part of ``Image`` shares: its base, its steps, and adding one more.

``Image`` is put together from mixins, one per family of methods (Dockerfiles, projects,
conda, named images: :mod:`hutch.sdk.imagedocker`, ...), each a subclass of this core so
that it can make images (``cls(...)``, ``self._then(step)``) without importing
:mod:`hutch.sdk.image`.
"""

from __future__ import annotations

from typing import Any, Self


class ImageCore:
    """An immutable list of steps on a base; each method returns a new image."""

    def __init__(self, base: dict[str, Any], steps: tuple[Any, ...] = (), *,
                 force_build: bool = False, ref: str | None = None) -> None:
        self._base = base
        self._steps = steps
        self._force_build = force_build
        self._ref = ref

    def _then(self, step: Any) -> Self:
        return type(self)(self._base, (*self._steps, step), force_build=self._force_build)

    def _image(self) -> Any:
        """This image as the full ``Image`` it always is, for the mixins' calls of methods
        defined there (``add_local_file``, ``resolve``)."""
        return self
