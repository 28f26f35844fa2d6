"""What the routes share: NDJSON events, the documentation of streams and errors, and
request bodies read with a bound (the fast path answers with the same helpers)."""

from __future__ import annotations

import base64
import json
import logging

from fastapi import Request

from hutch import __version__
from hutch.api.models import (
    API_VERSION,
    NDJSON,
    error_responses,
    stream_response,
)
from hutch.engine.errors import Invalid

log = logging.getLogger("hutch.server")

#: The largest stdin chunk one request may carry.
MAX_STDIN_CHUNK = 16 << 20
#: A long-poll (``wait`` of a sandbox or an exec): the longest a call may ask for, and the
#: default.
MAX_WAIT, DEFAULT_WAIT = 3600.0, 60.0


def health_answer() -> dict[str, str]:
    """``GET /v1/health``: the engine is up, of this version and API."""
    return {"status": "ok", "version": __version__, "api_version": API_VERSION}


def ndjson_event(**fields: object) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode() + b"\n"


def chunk_event(fd: int, data: bytes) -> bytes:
    return ndjson_event(fd=fd, data=base64.b64encode(data).decode())


errors_doc = error_responses


def stream_doc(description: str) -> dict[int | str, dict[str, object]]:
    return stream_response(NDJSON, f"NDJSON: {description}")


async def read_limited(request: Request) -> bytes:
    """The request body, refused beyond ``MAX_STDIN_CHUNK`` before more is read."""
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_STDIN_CHUNK:
            raise Invalid(f"a stdin write is limited to {MAX_STDIN_CHUNK} bytes per request")
    return bytes(data)


