"""Starting a command in a running sandbox, for execs and readiness probes.

Where the engine has a fork server (it needs the sandbox seccomp filter compiled to BPF,
which the host's libseccomp provides) a command is spawned by the sandbox's zygote
(:mod:`hutch.engine.commands.forkserver`), made at the sandbox's first command: about 0.3 ms.
Otherwise it is the runtime's ``exec`` (``crun exec``: about 7 ms, plus the shell that
moves it into the sandbox's cgroup on a rootless cgroup v1 host).  ``HUTCH_EXEC=runtime``
chooses the runtime's exec on purpose (to compare them, or to rule the zygote out).

Either way the command gets the same: the sandbox's namespaces and cgroup, its capability
set, ``no_new_privs`` and seccomp filter, umask 022, the given environment and working
directory, and pipes or /dev/null for its stdio.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import trio

from hutch.engine.commands.zygote import (
    ForkServer,
    TerminalError,
    ZygoteError,
    ZygoteLink,
    ZygoteProcess,
)
from hutch.engine.errors import Conflict, EngineError
from hutch.engine.isolation import cgroups, seccompbpf
from hutch.engine.isolation.idslices import Slice
from hutch.engine.kernel import proctree
from hutch.engine.runtime import ociconfig
from hutch.engine.runtime.base import OCIRuntime
from hutch.engine.storage import remains
from hutch.engine.storage.rootfs import SandboxDirs

log = logging.getLogger("hutch.commands")

#: Seconds a zygote with nothing running is kept (``HUTCH_ZYGOTE_IDLE`` overrides it): each
#: one holds about 1.7 MiB of its own pages, and making a new one costs a few milliseconds.
ZYGOTE_IDLE = 30.0


class CommandHost(Protocol):
    """What the starter needs of a running sandbox (the lifecycle's
    :class:`~hutch.engine.lifecycle.livesandbox.LiveSandbox`, a layer above): its
    processes' handles, its directories, and the zygote it keeps."""

    sandbox_id: str
    dirs: SandboxDirs
    pid: int
    pidfd: int | None
    ids: Slice | None
    zygote: ZygoteLink | None
    zygote_lock: trio.Lock

    def launcher(self) -> list[str]: ...


class CommandProcess(Protocol):
    """What an exec needs of a started command (runtime exec or zygote child)."""

    @property
    def pid(self) -> int | None: ...

    #: whether whatever watched it died with it still running (a zygote killed)
    lost: bool
    stdin: trio.lowlevel.FdStream | None
    stdout: trio.lowlevel.FdStream | None
    stderr: trio.lowlevel.FdStream | None
    returncode: int | None

    async def wait(self) -> int: ...

    def kill(self) -> None: ...


@dataclass
class StartedCommand:
    process: CommandProcess
    #: where the runtime writes the command's pid (None: ``process.pid`` is the command's)
    pid_file: Path | None = None
    #: files to remove once the command has ended
    leftovers: list[Path] = field(default_factory=list)

    def pid(self) -> int | None:
        if self.pid_file is None:
            return self.process.pid
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def pidfd(self) -> int | None:
        """A pidfd on the command held since it started (a zygote's command, while it runs):
        the one name of it that cannot have been reused."""
        if self.pid_file is None and isinstance(self.process, ZygoteProcess):
            return self.process.pidfd
        return None

    def terminal(self) -> int | None:
        """The master end of the command's terminal while it runs (an exec with a pty)."""
        if isinstance(self.process, ZygoteProcess):
            return self.process.terminal
        return None

    def remove_leftovers(self) -> None:
        for path in self.leftovers:
            path.unlink(missing_ok=True)


def make_fork_server() -> ForkServer:
    """The engine's fork server (started); it makes no zygotes where commands go through
    the runtime's exec."""
    bpf: str | None = None
    if os.environ.get("HUTCH_EXEC") == "runtime":
        log.info("execs use the runtime's exec (HUTCH_EXEC=runtime)")
    else:
        bpf = seccompbpf.default_annotation().get(seccompbpf.ANNOTATION)
        if bpf is None:
            log.warning("execs use the runtime's exec: the seccomp filter cannot be compiled "
                        "here (install libseccomp2)")
    server = ForkServer(ociconfig.capability_mask(ociconfig.DEFAULT_CAPABILITIES), bpf)
    server.start()
    return server


class CommandStarter:
    """Starts commands in sandboxes; owns the sandboxes' zygotes."""

    def __init__(self, runtime: OCIRuntime, fork_server: ForkServer | None,
                 nursery: trio.Nursery) -> None:
        self.runtime = runtime
        self.fork_server = fork_server
        self.nursery = nursery
        self.zygote_idle = float(os.environ.get("HUTCH_ZYGOTE_IDLE", ZYGOTE_IDLE))

    @property
    def via(self) -> str:
        return "zygote" if self.fork_server is not None else "runtime"

    async def start(self, live: CommandHost, command_id: str, argv: list[str],
                    env: dict[str, str], cwd: str, *, stdin: bool, stdout: bool,
                    stderr: bool, user: str | None = None,
                    pty: tuple[int, int] | None = None) -> StartedCommand:
        """Start ``argv`` in the sandbox (as ``user``; on a terminal of ``pty`` rows and
        columns, which then carries its stdin, stdout and stderr)."""
        if self.fork_server is not None:
            for retry in (True, False):
                link = await self._link(live)
                try:
                    process = await link.spawn(command_id, argv, env, cwd, stdin=stdin,
                                               stdout=stdout, stderr=stderr, user=user,
                                               pty=pty)
                except TerminalError as exc:
                    raise Conflict(f"sandbox {live.sandbox_id} has no usable terminal: "
                                   f"{exc}") from exc
                except ZygoteError as exc:
                    # gone before its reader noticed: a new one, unless the sandbox ended
                    if retry and not proctree.exited(live.pidfd):
                        continue
                    raise _refusal(live, exc) from exc
                return StartedCommand(process)
        if user is not None or pty is not None:
            raise Conflict("exec with `user` or `pty` needs the engine's zygotes, and this "
                           "engine starts commands with the runtime's exec (HUTCH_EXEC=runtime, "
                           "or libseccomp2 is missing: `hutch doctor` tells)")
        process_json = live.dirs.execs / f"{command_id}.json"
        process_json.write_text(json.dumps(ociconfig.process_spec(argv, env, cwd).model_dump(
            by_alias=True, exclude_none=True)))
        pid_file = live.dirs.execs / f"{command_id}.pid"
        try:
            spawned = await self.runtime.exec(live.sandbox_id, process_json, pid_file=pid_file,
                                              stdin=stdin, stdout=stdout, stderr=stderr,
                                              prefix=live.launcher())
        except BaseException:
            process_json.unlink(missing_ok=True)
            raise
        return StartedCommand(spawned, pid_file, [process_json, pid_file])

    async def _link(self, live: CommandHost) -> ZygoteLink:
        assert self.fork_server is not None
        async with live.zygote_lock:
            if live.zygote is not None and live.zygote.alive:
                live.zygote.last_used = trio.current_time()
                return live.zygote
            if live.pidfd is None:
                raise EngineError(f"sandbox {live.sandbox_id} has no process to join")
            try:  # the init's cgroups, as the runtime's exec would join them
                procs = await trio.to_thread.run_sync(cgroups.procs_files_to_join, live.pid)
            except OSError as exc:
                raise Conflict(f"Sandbox {live.sandbox_id} has already finished") from exc
            for retry in (True, False):
                try:
                    link = await self.fork_server.zygote(live.pidfd, procs,
                                                         userns=live.ids is not None)
                    break
                except ZygoteError as exc:
                    # the fork server died making it (killed, OOM): once more, from a new one
                    if retry and self.fork_server.gone() and not proctree.exited(live.pidfd):
                        continue
                    raise _refusal(live, exc) from exc
            # a zygote a crash leaves behind is found by this record (hutch.engine.storage.remains)
            remains.record(live.dirs.root, "zygote", link.pid, link.pidfd)
            self.nursery.start_soon(link.read_frames)
            self.nursery.start_soon(self._retire_when_idle, live, link)
            live.zygote = link
            return link

    async def _retire_when_idle(self, live: CommandHost, link: ZygoteLink) -> None:
        """Let ``link`` go once nothing it started runs and it has not been used for
        ``zygote_idle`` seconds (under the sandbox's lock: no command is being handed to it)."""
        while link.alive:
            await trio.sleep_until(link.last_used + self.zygote_idle)
            async with live.zygote_lock:
                if live.zygote is not link:
                    return
                idle_until = link.last_used + self.zygote_idle
                if not link.processes and not link.keep and trio.current_time() >= idle_until:
                    live.zygote = None
                    await link.close()
                    return
            await trio.sleep(1.0)

    async def prepare(self, live: CommandHost) -> None:
        """Make the sandbox's zygote now and keep it until :meth:`taken` (a pooled sandbox:
        its first exec should not pay for it).  A failure is only logged: that first exec
        tries again, and reports it."""
        if self.fork_server is None:
            return
        try:
            link = await self._link(live)
        except EngineError as exc:
            log.warning("no zygote for pooled sandbox %s yet: %s", live.sandbox_id, exc)
            return
        link.keep = True

    def taken(self, live: CommandHost) -> None:
        """The pooled sandbox has a user now: its zygote retires when idle, as any other."""
        if live.zygote is not None:
            live.zygote.keep = False
            live.zygote.last_used = trio.current_time()

    async def release(self, live: CommandHost) -> None:
        """Let the sandbox's zygote go (before its cgroup is removed)."""
        link, live.zygote = live.zygote, None
        if link is not None:
            with trio.CancelScope(shield=True):
                await link.close()


def _refusal(live: CommandHost, exc: ZygoteError) -> EngineError:
    """What a caller hears when the zygote failed it: the sandbox has ended (409), or an
    engine error; never the bare ZygoteError, which no caller (a probe) expects."""
    if proctree.exited(live.pidfd):
        return Conflict(f"Sandbox {live.sandbox_id} has already finished")
    return EngineError(f"cannot start commands in sandbox {live.sandbox_id}: {exc}")
