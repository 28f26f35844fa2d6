"""The OpenAI Agents SDK client's pure pieces, free of the framework so that they are unit
tested where it is not installed: the envelope a snapshot-persisted workspace travels in,
and the mapping of its exec arguments onto hutch's.

Why an envelope: the Agents SDK stores whatever ``persist_workspace`` returns as opaque bytes
(its snapshot store) and hands them back to ``hydrate_workspace``, usually a tar of the
workspace.  With hutch the workspace is kept as a snapshot image in the engine's store
instead (no tar through the SDK, milliseconds to restore), so the bytes name that image; a
magic line tells them from a tar, which ``hydrate_workspace`` still accepts.
"""

from __future__ import annotations

import json
import math
from typing import Literal, cast

#: ``tar``: a tar of the workspace (portable to other backends); ``snapshot_filesystem``: the
#: sandbox's whole file system as a snapshot image, restored by starting a sandbox from it;
#: ``snapshot_directory``: the workspace directory alone as an image, mounted back in place.
PersistenceMode = Literal["tar", "snapshot_filesystem", "snapshot_directory"]
MODES: tuple[PersistenceMode, ...] = ("tar", "snapshot_filesystem", "snapshot_directory")

MAGIC = b"HUTCH_WORKSPACE_SNAPSHOT_V1\n"


def encode_ref(image_ref: str, mode: PersistenceMode) -> bytes:
    """The bytes ``persist_workspace`` returns for a workspace kept as image ``image_ref``."""
    if mode == "tar" or not image_ref:
        raise ValueError(f"no snapshot envelope for mode {mode!r} and image {image_ref!r}")
    body = {"snapshot_id": image_ref, "workspace_persistence": mode}
    return MAGIC + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def decode_ref(raw: bytes) -> tuple[PersistenceMode, str] | None:
    """``(mode, image reference)`` from an envelope; ``None`` for anything else (a tar, or
    a damaged envelope, which then fails as a tar would rather than be half-trusted)."""
    if not raw.startswith(MAGIC):
        return None
    try:
        body = json.loads(raw[len(MAGIC):].decode())
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(body, dict):
        return None
    ref, mode = body.get("snapshot_id"), body.get("workspace_persistence")
    if not isinstance(ref, str) or not ref or mode not in MODES[1:]:
        return None
    return cast(PersistenceMode, mode), ref


def exec_timeout(timeout: float | None) -> int | None:
    """hutch's ``exec(timeout=)`` (whole seconds, at least 1) for the SDK's float seconds:
    rounded up, so the engine kills the command no earlier than the SDK gives up on it."""
    if timeout is None:
        return None
    if timeout <= 0 or math.isnan(timeout):
        raise ValueError(f"an exec timeout must be positive, got {timeout!r}")
    return max(1, math.ceil(timeout))


def tar_excludes(skip: list[str]) -> list[str]:
    """``tar --exclude`` arguments for workspace-relative paths left out of a persisted
    workspace (the manifest's ephemeral entries), in a stable order."""
    names = {rel.removeprefix("./").strip("/") for rel in skip}
    found: list[str] = []
    for rel in sorted(names - {"", "."}):
        found += ["--exclude", f"./{rel}"]
    return found
