"""Named images: ``Image.publish(name)`` and ``Image.from_name(name)``, and ``Image.shell``.

A published name is a tag of the engine's image store,
``hutch/named/<environment>/<name>:<tag>`` (environment ``main`` unless given, tag
``latest`` unless given, as Modal's ``name:tag`` and ``environment/name``), so another
process, ``hutch image ls`` and ``hutch image push`` all see it.  Publishing again moves the
name to the new image, as Modal's does.
"""

from __future__ import annotations

import re
from typing import Any, Self

from hutch.api import urls
from hutch.exception import InvalidError
from hutch.sdk import imagebases, imagesteps
from hutch.sdk.imagecore import ImageCore
from hutch.sdk.options import reject_unsupported
from hutch.sdk.syncbridge import synchronize
from hutch.sdk.transport import client

DEFAULT_ENVIRONMENT = "main"
_PART = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def named_ref(name: object, environment_name: str | None) -> str:
    """``hutch/named/<environment>/<name>:<tag>`` for Modal's ``[env/]name[:tag]``."""
    if not isinstance(name, str) or not name:
        raise InvalidError("an Image name is a non-empty string")
    bare, sep, tag = name.partition(":")
    tag = tag if sep else "latest"
    environment, slash, image = bare.rpartition("/")
    if slash and environment_name is not None:
        raise InvalidError("environment_name cannot be used when an Image name includes an "
                           "environment prefix.")
    environment = (environment if slash else environment_name) or DEFAULT_ENVIRONMENT
    for what, value, pattern in (("name", image, _PART), ("environment", environment, _PART),
                                 ("tag", tag, _TAG)):
        if not pattern.fullmatch(value):
            raise InvalidError(f"Invalid Image {what} {value!r}: lower-case letters, digits, "
                               "'.', '_' and '-'" + (" (and capitals in a tag)"
                                                     if what == "tag" else ""))
    return f"hutch/named/{environment}/{image}:{tag}"


class NamedImages(ImageCore):
    """Named images and ``shell`` of ``Image``."""

    @classmethod
    def from_name(cls, name: str, *, environment_name: str | None = None,
                  client: Any = None) -> Self:
        """An image published with :meth:`publish` (``name``, ``name:tag``,
        ``environment/name``), from this or any other process."""
        reject_unsupported({"client": client}, "Image.from_name")
        return cls(imagebases.from_id(named_ref(name, environment_name)))

    @synchronize
    async def publish(self, name: str, *, environment_name: str | None = None,
                      experimental_options: dict[str, Any] | None = None,
                      client: Any = None) -> None:
        """Build this image (unless cached) and give it ``name``, replacing the image that
        had it."""
        reject_unsupported({"client": client}, "Image.publish")
        if experimental_options:
            raise InvalidError("Image.publish: experimental_options are not supported")
        target = named_ref(name, environment_name)
        ref = await self._image().resolve()
        await _engine().request("POST", urls.IMAGES_TAG, json_body={"ref": ref, "name": target})

    def shell(self, shell_commands: list[str]) -> Self:
        """The shell later ``run_commands`` steps run in (Dockerfile ``SHELL``), as a list
        such as ``["/bin/bash", "-c"]``."""
        if not isinstance(shell_commands, list) or not shell_commands or not all(
                isinstance(c, str) and c for c in shell_commands):
            raise InvalidError("Image.shell needs a list of strings such as "
                               '["/bin/bash", "-c"]')
        step = imagesteps.config()
        step["shell"] = shell_commands
        return self._then(step)


_engine = client
