"""The kinds of error the engine's API answers, and the HTTP status of each: one home for
both sides (the engine raises them, its routes pick the status here, the SDK maps each kind
to a ``hutch.exception`` class, and ``ErrorBody.type`` lists them).

Why one table: the kinds used to be spelled in the engine's error classes, the wire model
and the SDK's map, and the status was fixed by each engine class; the routes (the edge)
now answer with ``STATUS[kind]``.  ``invalid`` is the caller's input; ``engine`` is the
engine's or the host's fault (a missing package, a failed helper), never the caller's.
"""

from __future__ import annotations

from typing import Literal, get_args

ErrorKind = Literal[
    "not_found", "already_exists", "invalid", "conflict", "engine", "timeout", "image_build",
    "resource_exhausted", "file_not_found", "is_a_directory", "not_a_directory",
    "permission_denied", "file_exists", "directory_not_empty", "file_busy", "file_error",
    "unauthorized",
]

#: Every kind, in the order above.
KINDS: tuple[str, ...] = get_args(ErrorKind)

#: The HTTP status each kind is answered with.
STATUS: dict[str, int] = {
    "not_found": 404, "already_exists": 409, "invalid": 400, "conflict": 409, "engine": 500,
    "timeout": 504, "image_build": 500, "resource_exhausted": 429, "file_not_found": 404,
    "is_a_directory": 400, "not_a_directory": 400, "permission_denied": 403,
    "file_exists": 409, "directory_not_empty": 409, "file_busy": 409, "file_error": 400,
    "unauthorized": 401,
}
