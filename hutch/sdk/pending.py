"""Modal's names that hutch will have and has not yet: the image sources and steps of
issue 18 (Dockerfiles, pyproject and uv projects, micromamba, functions run in a build,
named images).  (The snapshots and live image mounts of issue 19 are in
:mod:`hutch.sdk.snapshots`.)

Why they exist now: a program that names one at import (``image =
modal.Image.from_dockerfile(...)`` at module level) would otherwise stop with an
``AttributeError`` before any sandbox is made; with Modal's signatures here it gets an
:class:`~hutch.exception.InvalidError` that names the call and says it is not in this
version, as the SDK's ``_NOT_YET`` parameters do.  Each is replaced by the real one when its
issue lands (``tests/integration/test_modal_interface.py`` compares the signatures).
"""

from __future__ import annotations

from typing import NoReturn

from hutch.exception import InvalidError

_IMAGES = "images from Dockerfiles, projects and other sources are coming (issue 18)"


def not_yet(where: str, what: str) -> NoReturn:
    raise InvalidError(f"{where} is not supported by this version of hutch: {what}")


class ImagePending:
    """The part of Modal's ``Image`` that issue 18 brings."""

    @property
    def logs(self) -> NoReturn:
        """Modal's build logs of an image (``hutch image build`` shows them)."""
        not_yet("Image.logs", _IMAGES)
