"""Errors the engine raises while serving a request, each of an API error kind.

The routes answer them as an :class:`hutch.api.models.ErrorBody` with the kind's status
(:data:`hutch.api.errors.STATUS`: chosen at the edge, not here); the SDK turns that body
back into the matching ``hutch.exception`` class.  Anything else escaping a handler is a bug
and is answered as a 500 ``engine`` error with the traceback in the engine log.
"""

from __future__ import annotations

from hutch.api.errors import ErrorKind


class EngineError(Exception):
    """The engine's (or the host's) fault, not the caller's."""

    type: ErrorKind = "engine"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(EngineError):
    type: ErrorKind = "not_found"


class AlreadyExists(EngineError):
    type: ErrorKind = "already_exists"


class Invalid(EngineError):
    type: ErrorKind = "invalid"


class Conflict(EngineError):
    type: ErrorKind = "conflict"


class ImageBuildFailed(EngineError):
    type: ErrorKind = "image_build"


class TimedOut(EngineError):
    type: ErrorKind = "timeout"


class Exhausted(EngineError):
    """Every one of something sandboxes need one of is in use (user-id slices)."""

    type: ErrorKind = "resource_exhausted"


class HostFault(EngineError):
    """The host lacks something the engine needs (a package, a kernel feature) or a helper
    of the engine failed: an ``engine`` error naming the fix, not ``invalid``, which would
    tell the caller their input was wrong."""
