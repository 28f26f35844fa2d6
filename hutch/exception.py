"""The errors hutch raises, with Modal's names so ``except modal.exception.X`` keeps working.

::

    Error                       every hutch error
    ├── InvalidError            bad arguments (also a request the engine rejected as invalid)
    ├── NotFoundError           unknown sandbox, app, exec or image
    ├── AlreadyExistsError      a running sandbox of that name already exists in the app
    ├── ConflictError           the operation does not fit the object's state (exec on a
    │                           finished sandbox, stdin on an exited process)
    ├── ExecutionError          the engine failed to do what was asked
    │   └── ImageBuildError     building an image failed (with the build's last lines)
    ├── EngineError             the engine could not be started or reached, or answered
    │                           with an unexpected error or a version this SDK cannot use
    ├── TimeoutError            a wait ran out of time (also a builtin TimeoutError)
    │   ├── SandboxTimeoutError the sandbox hit its own timeout
    │   └── ExecTimeoutError    an exec hit its timeout
    └── SandboxTerminatedError  the sandbox was terminated
"""

from __future__ import annotations

import builtins


class Error(Exception):
    """Base class of every hutch error."""


class InvalidError(Error):
    """Invalid arguments, or a request the engine rejected as invalid."""


class NotFoundError(Error):
    """The sandbox, app, exec or image does not exist."""


class AlreadyExistsError(Error):
    """An object with that name already exists."""


class ConflictError(Error):
    """The object's state does not allow the operation."""


class ExecutionError(Error):
    """The engine failed to carry out the request."""


class ImageBuildError(ExecutionError):
    """An image build failed."""


class EngineError(Error):
    """The engine could not be started or reached, or answered unexpectedly."""


class TimeoutError(Error, builtins.TimeoutError):
    """An operation ran out of time."""


class SandboxTimeoutError(TimeoutError):
    """The sandbox reached its timeout."""


class ExecTimeoutError(TimeoutError):
    """An exec reached its timeout."""


class SandboxTerminatedError(Error):
    """The sandbox was terminated."""


__all__ = [
    "AlreadyExistsError",
    "ConflictError",
    "EngineError",
    "Error",
    "ExecTimeoutError",
    "ExecutionError",
    "ImageBuildError",
    "InvalidError",
    "NotFoundError",
    "SandboxTerminatedError",
    "SandboxTimeoutError",
    "TimeoutError",
]
