"""The image routes: the default image, build contexts, list, inspect, delete, prune, push
to a registry and builds streamed as NDJSON."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import trio
from fastapi import FastAPI, Query, Request
from fastapi.responses import StreamingResponse

from hutch.api import urls
from hutch.api.imagemodels import BuildImageRequest, PushImageRequest, TagImageRequest
from hutch.api.models import NDJSON
from hutch.engine.errors import EngineError, ImageBuildFailed, Invalid, NotFound
from hutch.engine.images.builder import STEP_PREFIX
from hutch.engine.lifecycle.manager import SandboxManager
from hutch.engine.routes.common import errors_doc, ndjson_event, stream_doc
from hutch.imagebuild import pusher
from hutch.imagebuild.layout import ImageNotFound

log = logging.getLogger("hutch.server")

#: The largest build context (a tar of local files) one upload may carry.
MAX_CONTEXT = 4 << 30


def add_image_routes(app: FastAPI, manager: SandboxManager) -> None:
    @app.post(urls.IMAGES_DEFAULT)
    async def default_image() -> dict[str, str]:
        """Build the default image unless it is built (the first sandbox would otherwise)."""
        return {"ref": await manager.images.ensure_default()}

    @app.get(urls.IMAGE_CONTEXT, responses=errors_doc(400, 422))
    async def has_context(digest: str) -> dict[str, bool]:
        """Whether a build context (a tar of local files) is already uploaded."""
        return {"present": _context_path(manager, digest).is_file()}

    @app.put(urls.IMAGE_CONTEXT, responses=errors_doc(400, 422))
    async def put_context(digest: str, request: Request) -> dict[str, str]:
        """Upload a build context; the body must hash to ``digest``."""
        target = _context_path(manager, digest)
        tmp = target.with_suffix(".part")
        sha = hashlib.sha256()
        size = 0
        with open(tmp, "wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_CONTEXT:
                    tmp.unlink(missing_ok=True)
                    raise Invalid(f"a build context is limited to {MAX_CONTEXT >> 20} MiB")
                sha.update(chunk)
                f.write(chunk)
        if "sha256:" + sha.hexdigest() != digest:
            tmp.unlink(missing_ok=True)
            raise Invalid(f"the uploaded context does not hash to {digest}")
        tmp.rename(target)
        return {"digest": digest}

    @app.get(urls.IMAGES)
    async def list_images() -> dict[str, list[dict[str, object]]]:
        """Every tagged image: reference, manifest digest, layer count, compressed size
        (each manifest read once, off the event loop: there may be thousands)."""
        store = manager.images.store

        def listing() -> list[dict[str, object]]:
            images: list[dict[str, object]] = []
            for ref, digest in sorted(store.refs().items()):
                layers = store.read_json(digest)["layers"]
                images.append({"ref": ref, "digest": digest, "layers": len(layers),
                               "size": sum(int(desc["size"]) for desc in layers)})
            return images

        return {"images": await trio.to_thread.run_sync(listing)}

    @app.get(urls.IMAGES_INSPECT, responses=errors_doc(404, 422))
    async def inspect_image(ref: str) -> dict[str, object]:
        """An image's manifest digest, layers and OCI config."""
        try:
            layers, config = manager.images.store.image_parts(ref)
        except ImageNotFound as exc:
            raise NotFound(f"image {ref!r} not found") from exc
        return {"ref": ref, "digest": manager.images.store.lookup(ref),
                "layers": [{"digest": d["digest"], "size": d["size"], "diff_id": diff}
                           for d, diff in layers],
                "config": config}

    @app.delete(urls.IMAGES, responses=errors_doc(404, 422))
    async def remove_image(ref: str) -> dict[str, str]:
        """Untag an image; its layers go with the next prune unless something uses them."""
        if not manager.images.store.untag(ref):
            raise NotFound(f"image {ref!r} not found")
        manager.images.forget(ref)
        return {"removed": ref}

    @app.post(urls.IMAGES_PRUNE, responses=errors_doc(422))
    async def prune_images(
        cache_older_than: Annotated[float | None, Query(ge=0)] = None,
        cache_keep_bytes: Annotated[int | None, Query(ge=0)] = None,
    ) -> dict[str, int]:
        """Delete blobs and unpacked layers no image and no running sandbox needs; first
        forget cached build steps (``hutch/step:*``): those not used for
        ``cache_older_than`` seconds (0: all), as ``docker builder prune --filter until=``
        does, then the least recently used beyond ``cache_keep_bytes`` (BuildKit's
        ``keepStorage``).  Why: every build step is an image, and a CI data directory grew
        to 4,089 of them and 43 GB in 17 hours; named images and snapshots stay."""
        store = manager.images.store
        expired: list[str] = []
        if cache_older_than is not None or cache_keep_bytes is not None:
            expired = await trio.to_thread.run_sync(store.expire, STEP_PREFIX,
                                                    cache_older_than, cache_keep_bytes)
            for ref in expired:
                manager.images.forget(ref)
        in_use = {layer for row in manager.store.list_sandboxes(pooled=True)
                  for layer in row.spec.layers}
        freed = await trio.to_thread.run_sync(store.prune, in_use)
        return {**freed, "cache_entries": len(expired)}

    @app.post(urls.IMAGES_PUSH, responses=errors_doc(400, 404, 422))
    async def push_image(req: PushImageRequest) -> dict[str, str]:
        """Copy an image to a registry with skopeo (plain HTTP for one on loopback); a
        failed copy is an ``image_build`` error with skopeo's last lines."""
        try:
            dest = pusher.registry_dest(req.dest)
        except ValueError as exc:
            raise Invalid(str(exc)) from exc
        store = manager.images.store
        try:
            digest = await trio.to_thread.run_sync(pusher.push_image, store, req.ref, dest,
                                                   req.credentials)
        except ImageNotFound as exc:
            raise NotFound(f"image {req.ref!r} not found") from exc
        except pusher.PushFailed as exc:
            raise ImageBuildFailed(str(exc)) from exc
        return {"ref": req.ref, "dest": dest, "digest": digest}

    @app.post(urls.IMAGES_TAG, responses=errors_doc(400, 404, 422))
    async def tag_image(req: TagImageRequest) -> dict[str, str]:
        """Give an image a published name (``Image.publish``), replacing that name's
        previous image."""
        store = manager.images.store
        digest = store.lookup(req.ref)
        if digest is None:
            raise NotFound(f"image {req.ref!r} not found")
        size = await trio.to_thread.run_sync(lambda: store.blob_path(digest).stat().st_size)
        await trio.to_thread.run_sync(store.tag, req.name, digest, size)
        manager.images.forget(req.name)
        return {"ref": req.name, "digest": digest}

    @app.post(urls.IMAGES_BUILD, response_class=StreamingResponse,
              responses=stream_doc("build progress and log events, then its ref or an error")
              | errors_doc(400, 422))
    async def build_image(req: BuildImageRequest) -> StreamingResponse:
        """Build an image, streaming its log as NDJSON, ending with its ref or an error."""
        return StreamingResponse(_build_events(manager, req), media_type=NDJSON)


async def _build_events(manager: SandboxManager, req: BuildImageRequest
                        ) -> AsyncIterator[bytes]:
    """Relay a build's progress and log lines; errors become an ``error`` event.

    The build runs in the daemon's nursery, not in this generator, so a client that goes
    away does not abandon a half-built image: it is finished and cached for the next call.
    """
    send, receive = trio.open_memory_channel[bytes](math.inf)

    async def build() -> None:
        async with send:
            try:
                ref = await manager.images.build(
                    req, lambda ev: _send_open(send, ndjson_event(**ev)))
            except EngineError as exc:
                _send_open(send, ndjson_event(error={"type": exc.type, "message": exc.message}))
            except Exception as exc:  # a daemon task must not die of one build
                log.exception("image build failed", exc_info=exc)
                _send_open(send, ndjson_event(error={"type": "engine",
                                               "message": f"{type(exc).__name__}: {exc}"}))
            else:
                _send_open(send, ndjson_event(ref=ref))

    manager.nursery.start_soon(build)
    async with receive:
        async for event in receive:
            yield event


def _context_path(manager: SandboxManager, digest: str) -> Path:
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise Invalid("a context digest is sha256: and 64 hex digits")
    return manager.images.contexts / digest.split(":", 1)[1]


def _send_open(channel: trio.MemorySendChannel[bytes], event: bytes) -> None:
    """Send unless the reader went away (the build goes on without it)."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        channel.send_nowait(event)


