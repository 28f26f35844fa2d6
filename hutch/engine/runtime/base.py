"""The OCI runtime interface the engine programs against.

As in podman, the runtime adapter is thin and holds no lifecycle state: it turns calls into
runtime command lines and runtime failures into :class:`RuntimeCommandError`.  Locking, state
checks and persistence live above it, in the sandbox manager.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from hutch.engine.runtime.spawn import SpawnedProcess


class RuntimeCommandError(Exception):
    """An OCI runtime command failed; carries the command line and what it printed."""

    def __init__(self, argv: list[str], code: int, stderr: str) -> None:
        self.argv = argv
        self.code = code
        self.stderr = stderr.strip()
        super().__init__(f"{' '.join(argv[:4])} ... exited {code}: {self.stderr[-800:]}")


class OCIRuntime(Protocol):
    """create/start/run, exec, kill, delete and state for one runtime binary."""

    name: str
    binary: str

    async def create(self, cid: str, bundle: Path, *, stdin: int | None, stdout: int,
                     stderr: int, pid_file: Path, prefix: Sequence[str] = (),
                     console_socket: Path | None = None) -> None:
        """Create the container (its process waits for :meth:`start`); ``prefix`` as for
        :meth:`exec`; a process on a terminal sends its master to ``console_socket``."""

    async def start(self, cid: str) -> None: ...

    async def exec(self, cid: str, process_json: Path, *, pid_file: Path, stdin: bool,
                   stdout: bool = True, stderr: bool = True,
                   prefix: Sequence[str] = ()) -> SpawnedProcess:
        """Start a process in the container; the caller owns the returned process.

        ``prefix`` is an argv the runtime's own command line is appended to (the engine's
        cgroup launcher).

        ``stdin``/``stdout``/``stderr`` say which streams are pipes; the others are
        /dev/null.
        """

    async def run_attached(self, cid: str, bundle: Path) -> SpawnedProcess:
        """Run a container in the foreground, stdout and stderr piped; the caller waits."""

    async def kill(self, cid: str, signal: int) -> None: ...

    async def delete(self, cid: str, *, force: bool = True) -> None: ...

    async def state(self, cid: str) -> dict[str, Any] | None:
        """The runtime's state document, or None when the container does not exist."""
