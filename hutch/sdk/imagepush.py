"""Push an image of the engine to a registry (``hutch image push``), so that an image built
with hutch runs elsewhere (podman, docker, a cluster).

The engine does the copying (``POST /v1/images/push``, skopeo from its OCI layout); this
is its client call: ``push_image(ref, dest, credentials=None)`` blocks, ``push_image.aio``
is the coroutine.
"""

from __future__ import annotations

from typing import Any

from hutch.api import urls
from hutch.exception import InvalidError
from hutch.sdk.options import check_text, shown
from hutch.sdk.syncbridge import BoundCall
from hutch.sdk.transport import client

__all__ = ["push_image"]


async def _push_image(ref: str, dest: str, credentials: str | None = None) -> str:
    """Push the engine's image ``ref`` (a reference from ``hutch image ls``, or
    ``Image.object_id``) to the registry reference ``dest`` (``127.0.0.1:5000/name:tag``,
    ``docker.io/me/name:1``; ``docker://`` optional; plain HTTP for a registry on
    localhost).  ``credentials`` is ``user:password`` (never logged, never in an error);
    without it skopeo uses the engine user's own logins.  Returns the digest of the
    pushed manifest."""
    for what, value in (("ref", ref), ("dest", dest)):
        if not isinstance(value, str) or not value:
            raise InvalidError(f"push_image needs `{what}` as a non-empty string, got "
                               f"{shown(value)}")
        check_text(value, f"push_image's {what}")
    body: dict[str, Any] = {"ref": ref, "dest": dest}
    if credentials is not None:
        if not isinstance(credentials, str) or ":" not in credentials[1:] \
                or credentials.startswith(":"):
            raise InvalidError("push_image's credentials must be a 'user:password' string")
        body["credentials"] = check_text(credentials, "push_image's credentials")
    answer = await client().request("POST", urls.IMAGES_PUSH, json_body=body)
    return str(answer.get("digest", ""))


push_image = BoundCall(_push_image, name="push_image", direct=True)
