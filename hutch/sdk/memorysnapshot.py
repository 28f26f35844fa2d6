"""Modal's memory snapshots (``sb._experimental_snapshot()``,
``Sandbox._experimental_from_snapshot(snapshot)``, ``Sandbox.create(
_experimental_enable_snapshot=True)``), which hutch refuses with the reason its engine
measured (``GET /v1/engine/checkpoint``).

Why refused: a memory snapshot is a CRIU checkpoint of the sandbox's processes, and every
sandbox process runs under hutch's seccomp filter.  CRIU can only dump a process under a
filter after suspending it (``PTRACE_O_SUSPEND_SECCOMP``), which Linux allows only with
``CAP_SYS_ADMIN`` in the *initial* user namespace (``check_ptrace_options`` in
``kernel/ptrace.c``); a rootless engine's capabilities are in its own user namespace.
Measured on Linux 6.18 with Debian trixie's criu 4.1.1 run unprivileged in a user, mount,
pid, net and ipc namespace: ``criu check --unprivileged`` says "Looks good", a plain Python
process is dumped and restored with its variables, but the same process under a one-rule
filter fails with "suspending seccomp failed: Operation not permitted"; crun 1.21's
``checkpoint`` also needs a freezer cgroup, which a rootless engine on a cgroup v1 host
is not delegated.  As root it works (criu 4.1.1 and crun 1.21 with ``+CRIU`` restored a
seccomp-confined container's Python process with its variables), but not with what
Debian bookworm ships (criu 3.17.1 fails ``criu check`` on this kernel, crun 1.8.1 is built
without CRIU).  The whole experiment: docs/limits.md, "Memory snapshots".

Why the engine answers: the question is what the engine may do in its own user namespace,
where CRIU would have to run, and this process may be another user's (root's, say) or on
another machine.  So the reason is the engine's, measured when asked (its kernel probe,
criu and runtime checks: hutch/engine/kernel/checkpoint.py), and a root engine on a host
where CRIU works is told that this version of hutch does not drive it, not that the kernel
forbids it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

from hutch.api import urls
from hutch.api.enginemodels import CheckpointInfo
from hutch.exception import InvalidError
from hutch.sdk import options
from hutch.sdk.syncbridge import static_direct, synchronize
from hutch.sdk.transport import client

#: Where the experiment is written up; every refusal names it.
DOC = 'docs/limits.md, "Memory snapshots"'


async def refuse(where: str) -> NoReturn:
    """:class:`InvalidError` for ``where`` with the reason the engine measured."""
    answer = CheckpointInfo.model_validate(await client().request("GET",
                                                                  urls.ENGINE_CHECKPOINT))
    raise InvalidError(f"{where}: memory snapshots are not available: {answer.reason} ({DOC})")


class _KeepName:
    def __repr__(self) -> str:
        return "<the snapshotted sandbox's name>"


#: Modal's default for ``name=``: restore under the name the snapshotted sandbox had.
KEEP_NAME: Any = _KeepName()


class SandboxMemorySnapshots:
    """The part of :class:`hutch.sdk.sandbox.Sandbox` for memory snapshots, with Modal 1.6's
    signatures; each call raises :class:`InvalidError` with the reason the engine measured
    when asked (see the module)."""

    if TYPE_CHECKING:
        def _attached(self) -> None: ...

    @synchronize
    async def _experimental_snapshot(self) -> NoReturn:
        """Modal: a snapshot of the sandbox's memory and files.  Raises
        :class:`InvalidError` with the engine's reason (``ClientClosed`` when detached)."""
        self._attached()
        await refuse("Sandbox._experimental_snapshot")

    @static_direct()
    async def _experimental_from_snapshot(snapshot: Any, client: Any = None, *,
                                          name: str | None = KEEP_NAME) -> NoReturn:
        """Modal: a new sandbox restored from ``snapshot``.  Raises :class:`InvalidError`
        with the engine's reason."""
        options.reject_unsupported({"client": client}, "Sandbox._experimental_from_snapshot")
        if name is not KEEP_NAME and name is not None:
            options.check_object_name(name, "Sandbox")
        await refuse("Sandbox._experimental_from_snapshot")
