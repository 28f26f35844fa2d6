"""Snapshots of a running sandbox and images mounted into it, a part of
:class:`hutch.sdk.sandbox.Sandbox` (Modal's ``snapshot_filesystem``,
``snapshot_directory``, ``mount_image`` and ``unmount_image``, with Modal's signatures).

A snapshot is an ordinary image of the engine (``hutch image ls`` lists it, ``hutch image
export``/``push`` take it) whose ``object_id`` is its reference, so
``Image.from_id(image.object_id)`` finds it from any process, and ``Sandbox.create(
image=snapshot)`` starts from it like from any cached image.  How the engine takes it:
docs/snapshots.md.

Kept apart so that the sandbox's module stays readable; what it uses of the sandbox is
its id and ``_attached``.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from hutch.api import urls
from hutch.api.snapshotmodels import DEFAULT_TTL
from hutch.exception import EngineError, InvalidError, SnapshotCreationError
from hutch.sdk import imagebases
from hutch.sdk.image import Image
from hutch.sdk.syncbridge import synchronize
from hutch.sdk.transport import client


def _path(value: object, where: str) -> str:
    """An absolute path in the sandbox, as text (Modal takes ``str`` or
    ``PurePosixPath``)."""
    if isinstance(value, PurePosixPath):
        value = str(value)
    if not isinstance(value, str) or not value.startswith("/"):
        raise InvalidError(f"{where}: the path must be absolute, got {value!r}")
    if "\0" in value:
        raise InvalidError(f"{where}: the path holds a NUL byte")
    return value


def _no_key(key: bytes | None, where: str) -> None:
    if key is not None:
        raise InvalidError(f"{where}: _experimental_encryption_key is not supported by "
                           "hutch (snapshots stay on this machine, in the engine's store)")


def _timeout(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 1:
        raise InvalidError(f"{where}: timeout must be a number of seconds, at least 1")
    return float(value)


def _ttl(value: object, where: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 0):
        raise InvalidError(f"{where}: ttl must be a number of seconds or None")
    return value


async def _snapshot_call(path: str, body: dict[str, Any], where: str) -> Image:
    try:
        doc = await client().request("POST", path, json_body=body)
    except EngineError as exc:
        if type(exc) is EngineError:  # the engine could not take it (not: unreachable)
            raise SnapshotCreationError(f"{where}: {exc}") from exc
        raise
    ref = str(doc["ref"])
    return Image(imagebases.from_id(ref), ref=ref)


class SandboxSnapshots:
    object_id: str

    if TYPE_CHECKING:
        def _attached(self) -> None: ...

    @synchronize
    async def snapshot_filesystem(self, timeout: int = 55, *,
                                  ttl: int | None = DEFAULT_TTL) -> Image:
        """The sandbox's whole file system as a new :class:`Image`, taken while it runs:
        its processes are held still (a frozen cgroup, or stop signals) while its
        changes are copied, then go on.  Volumes and other mounts are not part of it.
        ``ttl`` is accepted (Modal's retention); the image stays until removed."""
        self._attached()
        where = "Sandbox.snapshot_filesystem"
        body = {"timeout": _timeout(timeout, where), "ttl": _ttl(ttl, where)}
        return await _snapshot_call(
            urls.SANDBOX_SNAPSHOT_FILESYSTEM.format(sandbox_id=self.object_id), body, where)

    @synchronize
    async def snapshot_directory(self, path: PurePosixPath | str, *, timeout: int = 55,
                                 ttl: int | None = DEFAULT_TTL,
                                 _experimental_encryption_key: bytes | None = None) -> Image:
        """One directory of the sandbox as an :class:`Image` holding its contents alone
        (mounts below it left out), for :meth:`mount_image` in this or another sandbox."""
        self._attached()
        where = "Sandbox.snapshot_directory"
        _no_key(_experimental_encryption_key, where)
        body = {"path": _path(path, where), "timeout": _timeout(timeout, where),
                "ttl": _ttl(ttl, where)}
        return await _snapshot_call(
            urls.SANDBOX_SNAPSHOT_DIRECTORY.format(sandbox_id=self.object_id), body, where)

    @synchronize
    async def mount_image(self, path: PurePosixPath | str, image: Image, *,
                          _experimental_encryption_key: bytes | None = None) -> None:
        """Mount ``image`` at ``path`` (an absolute directory, not ``/``, made if
        missing; what was there is hidden until the unmount) in the running sandbox.
        The sandbox may change the files there; its changes are its own and go with
        :meth:`unmount_image`.  ``image`` is built first if it is not yet."""
        self._attached()
        where = "Sandbox.mount_image"
        _no_key(_experimental_encryption_key, where)
        target = _path(path, where)
        if not isinstance(image, Image):
            raise InvalidError(f"{where}: image must be a hutch Image, got "
                               f"{type(image).__name__}")
        ref = await image.resolve()
        await client().request(
            "POST", urls.SANDBOX_MOUNT_IMAGE.format(sandbox_id=self.object_id),
            json_body={"path": target, "image": ref})

    @synchronize
    async def unmount_image(self, path: PurePosixPath | str) -> None:
        """Unmount the image :meth:`mount_image` mounted at ``path`` (the same path);
        what was there before shows again.  :class:`InvalidError` where no image is."""
        self._attached()
        target = _path(path, "Sandbox.unmount_image")
        await client().request(
            "POST", urls.SANDBOX_UNMOUNT_IMAGE.format(sandbox_id=self.object_id),
            json_body={"path": target})
