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


class RemoteError(Error):
    """Code running in a sandbox or a build failed (Modal's base of ``ImageBuildError``)."""


class ImageBuildError(ExecutionError, RemoteError):
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


class SandboxFilesystemFileTooLargeError(SandboxFilesystemError):
    """A file is larger than the operation takes (Modal's name; hutch streams files)."""


class AuthError(Error):
    """A remote engine refused the credentials (a wrong or revoked token, see
    docs/remote.md); Modal's name for its own authentication failures."""


# Modal's other names, so that code written for Modal that catches or names them runs
# unchanged (``except modal.exception.InternalError:``).  hutch raises none of them: what
# they describe (its gRPC service, workspaces, Functions) does not exist here.

class InternalError(Error):
    """Modal's service failed internally (never raised: hutch raises ``EngineError``)."""


class DataLossError(Error):
    """Modal's service lost data (never raised)."""


class PermissionDeniedError(Error):
    """Modal's service refused the caller (never raised: file calls raise
    ``SandboxFilesystemPermissionError``)."""


class ServiceError(Error):
    """Modal's service was unavailable (never raised: hutch raises ``ConnectionError``)."""


class UnimplementedError(Error):
    """Modal's service lacks the call (never raised: hutch raises ``InvalidError``)."""


class WorkspaceManagementError(Error):
    """A Modal workspace operation failed (hutch has no workspaces: never raised)."""


class SnapshotCreationError(Error):
    """A snapshot could not be taken."""


class FunctionTimeoutError(TimeoutError):
    """A Modal Function timed out (hutch runs no Functions: never raised)."""


class MountUploadTimeoutError(TimeoutError):
    """Uploading a Modal mount timed out (never raised)."""


class VolumeUploadTimeoutError(TimeoutError):
    """Uploading to a volume timed out (never raised: uploads stream to the engine)."""


class LogsFetchError(Error):
    """Logs could not be fetched (never raised)."""


class InteractiveTimeoutError(TimeoutError):
    """An interactive Modal session timed out (never raised)."""


class OutputExpiredError(TimeoutError):
    """A Modal Function's output expired (never raised)."""


class DeserializationError(Error):
    """A Modal Function's result could not be read back (never raised)."""


class SerializationError(Error):
    """A Modal Function's argument could not be sent (never raised)."""


class RequestSizeError(Error):
    """A request to Modal's service was too large (never raised)."""


class InternalFailure(Error):
    """A Modal Function's input failed internally (never raised)."""


class DeprecationError(UserWarning):
    """A warning about a deprecated Modal feature."""


class ServerWarning(UserWarning):
    """A warning Modal's service sent (never issued)."""


class AsyncUsageWarning(UserWarning):
    """A blocking call made from async code (never issued: hutch's blocking calls work
    there, and ``.aio`` is the better choice)."""


class InternalAPIWarning(UserWarning):
    """Use of Modal's internal API (never issued)."""


class InputCancellation(BaseException):
    """A Modal Function's input was cancelled (never raised)."""


class ModuleNotMountable(Exception):
    """A module could not be mounted into a Modal Function (never raised)."""


def simulate_preemption(wait_seconds: int, jitter_seconds: int = 0) -> None:
    """Modal's test helper for preempted Functions: hutch runs no Functions."""
    raise InvalidError("modal.exception.simulate_preemption is not supported by hutch: it "
                       "runs sandboxes, not Modal Functions (docs/modal.md)")


__all__ = [
    "AlreadyExistsError",
    "AsyncUsageWarning",
    "AuthError",
    "ClientClosed",
    "ConflictError",
    "ConnectionError",
    "DataLossError",
    "DeprecationError",
    "DeserializationError",
    "EngineError",
    "EngineRestartedError",
    "Error",
    "ExecTimeoutError",
    "ExecutionError",
    "FunctionTimeoutError",
    "ImageBuildError",
    "InputCancellation",
    "InteractiveTimeoutError",
    "InternalAPIWarning",
    "InternalError",
    "InternalFailure",
    "InvalidError",
    "LogsFetchError",
    "ModuleNotMountable",
    "MountUploadTimeoutError",
    "NotFoundError",
    "OutputExpiredError",
    "PermissionDeniedError",
    "RemoteError",
    "RequestSizeError",
    "ResourceExhaustedError",
    "SandboxFilesystemBusyError",
    "SandboxFilesystemDirectoryNotEmptyError",
    "SandboxFilesystemError",
    "SandboxFilesystemFileTooLargeError",
    "SandboxFilesystemIsADirectoryError",
    "SandboxFilesystemNotADirectoryError",
    "SandboxFilesystemNotFoundError",
    "SandboxFilesystemPathAlreadyExistsError",
    "SandboxFilesystemPermissionError",
    "SandboxTerminatedError",
    "SandboxTimeoutError",
    "SerializationError",
    "ServerWarning",
    "ServiceError",
    "SnapshotCreationError",
    "TimeoutError",
    "UnimplementedError",
    "VersionError",
    "VolumeUploadTimeoutError",
    "WorkspaceManagementError",
]
