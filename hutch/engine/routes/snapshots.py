"""The snapshot routes: a running sandbox's file system or one of its directories as a
new image, and images mounted into (and unmounted from) a running sandbox
(:mod:`hutch.engine.lifecycle.snapshots`)."""

from __future__ import annotations

from fastapi import FastAPI

from hutch.api import urls
from hutch.api.snapshotmodels import (
    ImageMountInfo,
    MountImageRequest,
    SnapshotDirectoryRequest,
    SnapshotInfo,
    SnapshotRequest,
    UnmountImageRequest,
)
from hutch.engine.lifecycle.manager import SandboxManager
from hutch.engine.lifecycle.snapshots import SnapshotService
from hutch.engine.routes.common import errors_doc


def add_snapshot_routes(app: FastAPI, manager: SandboxManager) -> None:
    service = SnapshotService(manager)

    @app.post(urls.SANDBOX_SNAPSHOT_FILESYSTEM,
              responses=errors_doc(400, 404, 409, 422, 504))
    async def snapshot_filesystem(sandbox_id: str, req: SnapshotRequest) -> SnapshotInfo:
        """Snapshot the sandbox's file system (its changes over its image, taken while it
        is held still) as a new image over its image; ``409`` once it has finished,
        ``504`` past ``timeout``, ``500`` (``engine``) when it cannot be taken."""
        ref, digest = await service.snapshot_filesystem(sandbox_id, req.timeout)
        return SnapshotInfo(ref=ref, digest=digest)

    @app.post(urls.SANDBOX_SNAPSHOT_DIRECTORY,
              responses=errors_doc(400, 404, 409, 422, 504))
    async def snapshot_directory(sandbox_id: str, req: SnapshotDirectoryRequest
                                 ) -> SnapshotInfo:
        """Snapshot one directory of the sandbox as an image of its contents alone (for
        ``mount_image``); mounts below it are left out."""
        ref, digest = await service.snapshot_directory(sandbox_id, req.path, req.timeout)
        return SnapshotInfo(ref=ref, digest=digest)

    @app.post(urls.SANDBOX_MOUNT_IMAGE, responses=errors_doc(400, 404, 409, 422))
    async def mount_image(sandbox_id: str, req: MountImageRequest) -> ImageMountInfo:
        """Mount an image at a path of the running sandbox (made if missing), writable,
        its changes kept apart and dropped at the unmount."""
        seen = await service.mount_image(sandbox_id, req.path, req.image)
        return ImageMountInfo(path=req.path, mounted_at=seen)

    @app.post(urls.SANDBOX_UNMOUNT_IMAGE, responses=errors_doc(400, 404, 409, 422))
    async def unmount_image(sandbox_id: str, req: UnmountImageRequest) -> dict[str, str]:
        """Unmount the image mounted at the path (the one given to the mount); ``400``
        where none is."""
        await service.unmount_image(sandbox_id, req.path)
        return {"unmounted": req.path}
