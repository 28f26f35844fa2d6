"""``hutch.Image``: an immutable description of a sandbox's filesystem, built by the engine.

An image is a list of steps; building it asks the engine (``POST /v1/images/build``), which
builds what is not cached and answers with the image's reference while streaming its log.
The first build of a given image in this process remembers the reference, so later sandboxes
from the same ``Image`` object cost no extra request.  The Debian bases are here; further
steps (``pip_install``, ``apt_install``, ...) belong to the image builder.
"""

from __future__ import annotations

import sys
from typing import Any

from hutch.api.models import DEBIAN_PYTHON_SUITES
from hutch.exception import EngineError, InvalidError
from hutch.sdk.output import BuildDisplay
from hutch.sdk.syncbridge import synchronize
from hutch.sdk.transport import client


def _local_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


class Image:
    """A sandbox image; construct one with a class method such as :meth:`debian_slim`."""

    def __init__(self, steps: list[dict[str, Any]], *, force_build: bool = False,
                 ref: str | None = None) -> None:
        self._steps = steps
        self._force_build = force_build
        self._ref = ref

    @staticmethod
    def debian_slim(python_version: str | None = None, force_build: bool = False) -> Image:
        """Debian with Python: bookworm for 3.11, trixie for 3.13.

        The default is this interpreter's version when Debian has it, else 3.11.
        """
        if python_version is None:
            local = _local_python()
            python_version = local if local in DEBIAN_PYTHON_SUITES else "3.11"
        if not isinstance(python_version, str) or python_version not in DEBIAN_PYTHON_SUITES:
            supported = ", ".join(sorted(DEBIAN_PYTHON_SUITES))
            raise InvalidError(
                f"Python {python_version!r} has no Debian base image; supported versions: "
                f"{supported}"
            )
        step = {"kind": "debian_slim", "python_version": python_version}
        return Image([step], force_build=bool(force_build))

    @staticmethod
    def from_id(image_id: str) -> Image:
        """An image the engine already has, by its reference (``hutch image ls``)."""
        if not isinstance(image_id, str) or not image_id:
            raise InvalidError("Image.from_id needs an image id")
        return Image([], ref=image_id)

    @property
    def object_id(self) -> str | None:
        """The engine's reference of this image once it has been built, else None."""
        return self._ref

    @synchronize
    async def build(self) -> str:
        """Build the image now (or find it cached); returns its reference."""
        return await self.resolve()

    async def resolve(self) -> str:
        if self._ref is not None and not self._force_build:
            return self._ref
        what = ", ".join(f"{k}={v}" for step in self._steps for k, v in step.items()
                         if k != "kind")
        with BuildDisplay(f"debian_slim({what})") as display:
            body = {"steps": self._steps, "force_build": self._force_build}
            ref: str | None = None
            async for event in client().stream_events("/v1/images/build", method="POST",
                                                      json_body=body):
                if "log" in event:
                    display.line(str(event["log"]))
                elif "ref" in event:
                    ref = str(event["ref"])
            if ref is None:
                raise EngineError("the engine ended the image build without a result")
            display.done(ref)
        self._ref = ref
        self._force_build = False
        return ref

    def __repr__(self) -> str:
        return f"Image({self._ref or self._steps!r})"
