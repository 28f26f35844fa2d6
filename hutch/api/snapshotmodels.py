"""Wire types of filesystem snapshots and images mounted into running sandboxes
(``sb.snapshot_filesystem``, ``sb.snapshot_directory``, ``sb.mount_image``,
``sb.unmount_image``).  Kept apart from :mod:`hutch.api.models` so that each stays
readable; the engine's side is :mod:`hutch.engine.lifecycle.snapshots`."""

from __future__ import annotations

from pydantic import Field, field_validator

from hutch.api.models import MAX_TIMEOUT, _Wire

#: The longest path a snapshot or mount call takes (Linux's PATH_MAX).
MAX_PATH = 4096
#: Modal's default ``ttl`` of a snapshot (30 days); hutch keeps snapshots until removed.
DEFAULT_TTL = 30 * 24 * 3600


def check_sandbox_path(path: str) -> str:
    """An absolute path in a sandbox, without NUL bytes (its checks against the sandbox's
    root are the engine's, which resolves it there)."""
    if not path.startswith("/") or "\0" in path:
        raise ValueError(f"{path[:200]!r} is not an absolute path")
    return path


class SandboxPathRequest(_Wire):
    """A call about one absolute path of a running sandbox."""

    path: str = Field(min_length=1, max_length=MAX_PATH)

    _path = field_validator("path")(classmethod(lambda cls, v: check_sandbox_path(v)))


class SnapshotRequest(_Wire):
    """Snapshot a running sandbox's whole file system (its changes over its image)."""

    #: seconds the engine may take (at least one); past it the snapshot stops with a
    #: ``timeout`` error
    timeout: float = Field(default=55.0, ge=1, le=MAX_TIMEOUT)
    #: Modal's retention, accepted: a snapshot stays until ``hutch image rm`` removes it
    ttl: int | None = Field(default=DEFAULT_TTL, ge=0)


class SnapshotDirectoryRequest(SandboxPathRequest, SnapshotRequest):
    """Snapshot one directory of a running sandbox as an image of its contents alone."""


class SnapshotInfo(_Wire):
    """A snapshot taken: its image's reference (``Image.from_id``) and manifest digest."""

    ref: str
    digest: str


class MountImageRequest(SandboxPathRequest):
    """Mount an image of the engine (by reference) at ``path`` in a running sandbox."""

    image: str = Field(min_length=1, max_length=512)


class UnmountImageRequest(SandboxPathRequest):
    """Unmount the image mounted at ``path`` (the path given to the mount)."""


class ImageMountInfo(_Wire):
    """An image mount: the path asked for and where it resolved to in the sandbox."""

    path: str
    mounted_at: str
