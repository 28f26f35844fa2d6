"""hutch as a LangChain Deep Agents sandbox backend, and its Deep Agents Code provider.

Deep Agents (``deepagents``) runs a model's shell commands and file edits through a backend
that implements ``deepagents.backends.protocol.SandboxBackendProtocol``.  Its
``BaseSandbox`` derives every file operation (ls, read, write, edit, grep, glob) from four
primitives a provider supplies: ``execute``, ``upload_files``, ``download_files`` and
``id``; that is the whole surface the hosted providers (``langchain-modal``,
``langchain-daytona``, ...) implement, and what :class:`HutchSandbox` implements on the SDK:

    from hutch.integrations.langchain import HutchSandbox
    agent = create_deep_agent(model=..., backend=HutchSandbox.create())

Files move through the engine's file API (``sb.filesystem``), not through ``base64`` in a
shell command as some providers do: paths resolve inside the sandbox whatever symlinks it
holds, and a large file streams.  Commands run under ``bash`` where the image has it (what a
model writes usually assumes it), else ``sh``.

Deep Agents Code (``deepagents-code``, the ``dcode`` command) finds sandbox providers
through the ``deepagents_code.sandbox_providers`` entry point group: :class:`HutchProvider`
is registered there as ``hutch``, so ``dcode --sandbox hutch`` starts hutch sandboxes (from
a warm pool when ``pool_size`` is set in its config's ``params``).  The provider is duck
typed against its ``SandboxProvider`` class, so this module does not need that package.
"""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

from deepagents.backends.protocol import (
    ExecuteResponse,
    FileDownloadResponse,
    FileUploadResponse,
)
from deepagents.backends.sandbox import BaseSandbox

from hutch.exception import Error, NotFoundError
from hutch.sdk.app import App
from hutch.sdk.image import Image
from hutch.sdk.process import EXEC_TIMEOUT_RETURNCODE
from hutch.sdk.sandbox import Sandbox

#: Seconds a command may run when the caller gives no timeout (as ``langchain-modal``).
DEFAULT_EXECUTE_TIMEOUT = 30 * 60
#: Most bytes of output kept in an ``ExecuteResponse``: the rest is drained, not held, and
#: the response says ``truncated`` (a runaway ``yes`` must not fill the agent's memory).
MAX_OUTPUT_BYTES = 1 << 20
#: The working directory of sandboxes this module creates (Deep Agents' convention).
WORKDIR = "/workspace"
#: The app of sandboxes this module creates: ``hutch ps`` shows them together.
APP_NAME = "deepagents"

#: Runs the command under bash where the image has it, else sh; ``$0`` is the command.
_SHELL = ('if command -v bash >/dev/null 2>&1; then exec bash -c "$0"; '
          'else exec sh -c "$0"; fi')


class HutchSandbox(BaseSandbox):  # type: ignore[misc]
    """A hutch sandbox as a Deep Agents backend (``SandboxBackendProtocol``).

    Wraps a running :class:`hutch.Sandbox` (``HutchSandbox(sandbox=sb)``, as
    ``ModalSandbox(sandbox=...)`` wraps Modal's) or makes one (:meth:`create`); it does not
    terminate a sandbox it was given, and :meth:`close` (or ``with``) terminates one it made.
    """

    #: The capture wrapper of ``execute_with_offload`` needs sh and coreutils, which
    #: hutch's default image has.
    enable_capture_offload = True

    def __init__(self, *, sandbox: Sandbox,
                 default_timeout: int = DEFAULT_EXECUTE_TIMEOUT) -> None:
        if not isinstance(sandbox, Sandbox):
            raise TypeError(f"sandbox must be a hutch.Sandbox, not {type(sandbox).__name__}")
        if default_timeout <= 0:
            raise ValueError(f"default_timeout must be positive, got {default_timeout}")
        self._sandbox = sandbox
        self._default_timeout = default_timeout
        self._owned = False

    @classmethod
    def create(cls, *, image: Image | str | None = None, timeout: int = 3600,
               workdir: str = WORKDIR, app: App | None = None,
               default_timeout: int = DEFAULT_EXECUTE_TIMEOUT,
               **create_kwargs: Any) -> HutchSandbox:
        """A backend on a new sandbox (``Sandbox.create``'s keywords pass through), which
        :meth:`close` terminates.  ``image``: a ``hutch.Image`` or an image reference."""
        if isinstance(image, str):
            image = Image.from_id(image)
        sandbox = Sandbox.create(app=app or App.lookup(APP_NAME, create_if_missing=True),
                                 image=image, timeout=timeout, workdir=workdir,
                                 **create_kwargs)
        backend = cls(sandbox=sandbox, default_timeout=default_timeout)
        backend._owned = True
        return backend

    @property
    def sandbox(self) -> Sandbox:
        """The hutch sandbox under this backend, for what the protocol does not cover."""
        return self._sandbox

    @property
    def id(self) -> str:
        """The sandbox's id (``sb-...``): ``hutch exec ID``, ``Sandbox.from_id`` find it."""
        return self._sandbox.object_id

    def close(self) -> None:
        """Terminate the sandbox if this backend created it (else leave it running)."""
        if self._owned:
            self._sandbox.terminate(grace_period=0)

    def __enter__(self) -> HutchSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # the four primitives ------------------------------------------------------------------
    def execute(self, command: str, *, timeout: int | None = None) -> ExecuteResponse:
        """Run ``command`` in a shell; stdout and stderr together in the order written.

        ``timeout`` in seconds (``None``: the backend's default; ``0``: none).  A command that
        runs past it is killed with everything it started, and answers exit code 124 with a
        line saying so, as Deep Agents' local shell backend does.
        """
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must not be negative, got {timeout}")
        limit = self._default_timeout if timeout is None else timeout
        proc = self._sandbox.exec("sh", "-c", _SHELL, command, text=False,
                                  timeout=limit or None)
        proc.stdin.write_eof()
        proc.stdin.drain()
        chunks: list[bytes] = []
        kept = 0
        truncated = False
        for _fd, data in proc.events():
            room = MAX_OUTPUT_BYTES - kept
            truncated = truncated or len(data) > room
            if room > 0:
                chunks.append(data[:room])
                kept += len(chunks[-1])
        code = proc.wait()
        output = b"".join(chunks).decode("utf-8", errors="replace")
        if code == EXEC_TIMEOUT_RETURNCODE:
            note = (f"Error: Command timed out after {limit} seconds. For long-running "
                    "commands, re-run using the timeout parameter.")
            return ExecuteResponse(output=f"{output}\n{note}" if output else note,
                                   exit_code=124, truncated=truncated)
        return ExecuteResponse(output=output, exit_code=code, truncated=truncated)

    def upload_files(self, files: list[tuple[str, bytes]]) -> list[FileUploadResponse]:
        """Write each file (missing parent directories made); errors per file."""
        responses = []
        for path, content in files:
            error = _path_error(path)
            if error is None:
                try:
                    self._sandbox.filesystem.write_bytes(bytes(content), path)
                except (Error, OSError) as exc:
                    error = _file_error(exc)
            responses.append(FileUploadResponse(path=path, error=error))
        return responses

    def download_files(self, paths: list[str]) -> list[FileDownloadResponse]:
        """Read each file whole; errors per file."""
        responses = []
        for path in paths:
            error = _path_error(path)
            content = None
            if error is None:
                try:
                    content = self._sandbox.filesystem.read_bytes(path)
                except (Error, OSError) as exc:
                    error = _file_error(exc)
            responses.append(FileDownloadResponse(path=path, content=content, error=error))
        return responses

    # (the protocol's async forms run the blocking calls on a thread: hutch's blocking
    # calls talk to the engine on the calling thread, so this costs no event-loop hop)
    async def aupload_files(self, files: list[tuple[str, bytes]]) -> list[FileUploadResponse]:
        return await asyncio.to_thread(self.upload_files, files)

    async def adownload_files(self, paths: list[str]) -> list[FileDownloadResponse]:
        return await asyncio.to_thread(self.download_files, paths)


def _path_error(path: object) -> str | None:
    """Deep Agents' ``invalid_path`` for what cannot name a file in the sandbox: the
    protocol's paths are absolute (a relative one would depend on the workdir)."""
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        return "invalid_path"
    return None


def _file_error(exc: BaseException) -> str:
    """The protocol's error literal for ``exc`` (hutch's filesystem errors are also the
    builtin ``OSError`` subclasses), or its message where none fits."""
    if isinstance(exc, FileNotFoundError | NotFoundError):
        return "file_not_found"
    if isinstance(exc, PermissionError):
        return "permission_denied"
    if isinstance(exc, IsADirectoryError):
        return "is_directory"
    if isinstance(exc, NotADirectoryError):
        return "invalid_path"
    return f"{type(exc).__name__}: {exc}"


class HutchProvider:
    """Deep Agents Code's sandbox provider for hutch (entry point
    ``deepagents_code.sandbox_providers``: ``hutch``).

    ``get_or_create(sandbox_id=None, **params)`` reconnects to a running sandbox or creates
    one; ``params`` (its config's ``[sandboxes.providers.hutch.params]``) are ``image`` (a
    reference), ``timeout`` (seconds the sandbox lives, default 3600), ``pool_size`` (keep
    that many sandboxes of the image started: later ones start in milliseconds) and
    ``block_network``.
    """

    @property
    def metadata(self) -> Any:
        """Its ``SandboxProviderMetadata`` where ``deepagents-code`` is installed."""
        try:
            module = importlib.import_module("deepagents_code.integrations.sandbox_provider")
        except ImportError:
            return None
        return module.SandboxProviderMetadata(name="hutch", working_dir=WORKDIR,
                                              supports_sandbox_id=True,
                                              backend_module="hutch.integrations.langchain")

    def get_or_create(self, *, sandbox_id: str | None = None, image: str | None = None,
                      timeout: int = 3600, pool_size: int = 0, block_network: bool = False,
                      **kwargs: Any) -> HutchSandbox:
        """The running sandbox ``sandbox_id``, or a new one from ``image``."""
        if sandbox_id:
            sandbox = Sandbox.from_id(sandbox_id)
            if sandbox.poll() is not None:
                raise NotFoundError(f"sandbox {sandbox_id} has finished")
            return HutchSandbox(sandbox=sandbox)
        app = App.lookup(APP_NAME, create_if_missing=True)
        chosen = Image.from_id(image) if image else None
        if pool_size:
            app.warm_pool(chosen, size=pool_size, block_network=block_network)
        return HutchSandbox.create(image=chosen, timeout=timeout, app=app,
                                   block_network=block_network)

    def delete(self, *, sandbox_id: str, **kwargs: Any) -> None:
        """Terminate the sandbox ``sandbox_id``."""
        Sandbox.from_id(sandbox_id).terminate(grace_period=0)

    async def aget_or_create(self, *, sandbox_id: str | None = None,
                             **kwargs: Any) -> HutchSandbox:
        return await asyncio.to_thread(self.get_or_create, sandbox_id=sandbox_id, **kwargs)

    async def adelete(self, *, sandbox_id: str, **kwargs: Any) -> None:
        await asyncio.to_thread(self.delete, sandbox_id=sandbox_id, **kwargs)


__all__ = ["DEFAULT_EXECUTE_TIMEOUT", "HutchProvider", "HutchSandbox"]
