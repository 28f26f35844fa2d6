"""The errors hutch raises, with Modal's names so ``except modal.exception.X`` keeps working.

Why Modal's tree: code written for Modal catches the same errors here.  ``ConflictError`` is
an ``InvalidError``, ``ImageBuildError`` an ``ExecutionError``; ``ConnectionError`` (and its
``EngineRestartedError``: whether the request was done is unknown) and ``VersionError``
subclass ``EngineError``, ``SandboxTimeoutError`` and ``ExecTimeoutError`` subclass
``TimeoutError``.  ``TimeoutError`` and ``ConnectionError`` shadow the builtins of the same
name inside this module and also subclass them, and each ``SandboxFilesystem*Error`` is
also the builtin ``OSError`` subclass of the same meaning (``SandboxFilesystemBusyError``:
``BlockingIOError``, a lease the sandbox holds).
Details: docs/design.md, "Errors"; docs/api.md, "hutch.exception".
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


class ConflictError(InvalidError):
    """The object's state does not allow the operation."""


class ExecutionError(Error):
    """The engine failed to carry out the request."""


class ImageBuildError(ExecutionError):
    """An image build failed."""


class EngineError(Error):
    """The engine answered with an unexpected error."""


class ConnectionError(EngineError, builtins.ConnectionError):
    """The engine could not be started, or the connection to it was lost."""


class EngineRestartedError(ConnectionError):
    """The engine stopped (it crashed, or was restarted) after a request that is not safe
    to repeat (a create, an exec) was sent and before it answered: whether it was done is
    unknown, so it is not sent again.  The next call reaches a restarted engine."""


class VersionError(EngineError):
    """The running engine speaks an API version this SDK cannot use."""


class ClientClosed(Error):
    """The object was detached from the engine; get a new one with ``from_id``."""


class TimeoutError(Error, builtins.TimeoutError):
    """An operation ran out of time."""


class SandboxTimeoutError(TimeoutError):
    """The sandbox reached its timeout."""


class ExecTimeoutError(TimeoutError):
    """An exec reached its timeout."""


class ResourceExhaustedError(Error):
    """The engine has no more of something every sandbox needs one of (for example user
    ids for a sandbox's own user namespace); the message names the fix."""


class SandboxTerminatedError(Error):
    """The sandbox was terminated."""


class SandboxFilesystemError(Error):
    """A file operation in a sandbox failed."""


class SandboxFilesystemNotFoundError(SandboxFilesystemError, FileNotFoundError):
    """No such file or directory in the sandbox."""


class SandboxFilesystemIsADirectoryError(SandboxFilesystemError, IsADirectoryError):
    """A file operation met a directory."""


class SandboxFilesystemNotADirectoryError(SandboxFilesystemError, NotADirectoryError):
    """A directory operation met something else."""


class SandboxFilesystemPermissionError(SandboxFilesystemError, PermissionError):
    """Not allowed (including a path that would leave the sandbox)."""


class SandboxFilesystemPathAlreadyExistsError(SandboxFilesystemError, FileExistsError):
    """The path already exists."""


class SandboxFilesystemDirectoryNotEmptyError(SandboxFilesystemError, OSError):
    """The directory is not empty (remove it with ``recursive=True``)."""


class SandboxFilesystemBusyError(SandboxFilesystemError, BlockingIOError):
    """The file is held by a lease (``fcntl F_SETLEASE``) of a process in the sandbox; the
    engine never waits for one (a lease holder could make it wait 45 s), so try again."""


__all__ = [
    "AlreadyExistsError",
    "ClientClosed",
    "ConflictError",
    "ConnectionError",
    "EngineError",
    "EngineRestartedError",
    "Error",
    "ExecTimeoutError",
    "ExecutionError",
    "ImageBuildError",
    "InvalidError",
    "NotFoundError",
    "ResourceExhaustedError",
    "SandboxFilesystemBusyError",
    "SandboxFilesystemDirectoryNotEmptyError",
    "SandboxFilesystemError",
    "SandboxFilesystemIsADirectoryError",
    "SandboxFilesystemNotADirectoryError",
    "SandboxFilesystemNotFoundError",
    "SandboxFilesystemPathAlreadyExistsError",
    "SandboxFilesystemPermissionError",
    "SandboxTerminatedError",
    "SandboxTimeoutError",
    "TimeoutError",
    "VersionError",
]
