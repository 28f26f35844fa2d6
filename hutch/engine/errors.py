"""Errors the engine raises while serving a request, each with its HTTP status.

The server turns them into an :class:`hutch.api.models.ErrorBody`; the SDK turns that body
back into the matching ``hutch.exception`` class.  Anything else escaping a handler is a bug
and is answered as a 500 ``engine`` error with the traceback in the engine log.
"""

from __future__ import annotations


class EngineError(Exception):
    type = "engine"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(EngineError):
    type = "not_found"
    status = 404


class AlreadyExists(EngineError):
    type = "already_exists"
    status = 409


class Invalid(EngineError):
    type = "invalid"
    status = 400


class Conflict(EngineError):
    type = "conflict"
    status = 409


class ImageBuildFailed(EngineError):
    type = "image_build"
    status = 500


class TimedOut(EngineError):
    type = "timeout"
    status = 504


class Exhausted(EngineError):
    """Every one of something sandboxes need one of is in use (user-id slices)."""

    type = "resource_exhausted"
    status = 429
