"""What the daemon knows of a running sandbox beyond its database row, and the waits of
its supervisor (exit, activity for ``idle_timeout``, deadlines)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from hutch.api.models import ProbeSpec
from hutch.engine.commands.zygote import ZygoteLink
from hutch.engine.isolation.cgroups import SandboxCgroup
from hutch.engine.isolation.idslices import Slice
from hutch.engine.lifecycle.logindex import LogIndex
from hutch.engine.storage import rootfs


@dataclass
class LiveSandbox:
    """What the daemon knows of a running sandbox beyond its database row."""

    sandbox_id: str
    dirs: rootfs.SandboxDirs
    pid: int
    pidfd: int | None
    deadline: float
    default_entrypoint: bool
    env: dict[str, str]
    workdir: str
    terminating: bool = False
    #: its process has exited (its row is being marked so, or is)
    ended: bool = False
    stdin: trio.lowlevel.FdStream | None = None
    idle_timeout: float | None = None
    probe: ProbeSpec | None = None
    ready: trio.Event = field(default_factory=trio.Event)
    #: Execs running now, and when the sandbox was last used (exec or stdin), wall time.
    active: int = 0
    last_active: float = field(default_factory=time.time)
    activity: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    cgroup: SandboxCgroup | None = None
    #: its own ids (None: it shares the engine's namespace)
    ids: Slice | None = None
    #: it has open network access, so the user's tunnels listen inside it too
    reaches_tunnels: bool = False
    #: when its entrypoint's output was written (made by the manager)
    log_index: LogIndex | None = None
    #: the zygote that starts its commands (made at the first one), and its guard
    zygote: ZygoteLink | None = None
    zygote_lock: trio.Lock = field(default_factory=trio.Lock)

    def launcher(self) -> list[str]:
        """The argv prefix that starts an exec (or probe) inside the sandbox's cgroup;
        none where the runtime joins the cgroup itself (it was given ``cgroupsPath``)."""
        if self.cgroup is None or self.cgroup.runtime_path is not None:
            return []
        return self.cgroup.launcher()

    @property
    def owner(self) -> int | None:
        """The engine id of the sandbox's root, where it has ids of its own: what the
        engine makes in its file system belongs to it."""
        return None if self.ids is None else self.ids.root

    def touch(self) -> None:
        """It was used now.  The supervisor is woken only where that may bring its next look
        forward (an idle clock starting: nothing of it runs any more); otherwise its next
        look can only be later, and it finds the new times when it wakes.  Why not every
        time: an exec touches the sandbox twice, and a woken supervisor made a nursery, two
        tasks and a deadline each time (about 6% of the engine's CPU per exec)."""
        self.last_active = time.time()
        if self.idle_timeout is not None and not self.active:
            self.reschedule()

    def reschedule(self) -> None:
        """Wake the supervisor to look at the sandbox's times again (its deadline moved)."""
        self.activity.set()
        self.activity = trio.Event()

    def current_pidfd(self) -> int | None:
        """Its init's pidfd, None once closed (tunnels ask before each connection)."""
        return self.pidfd

    def connections(self, delta: int) -> None:
        """A connection through one of its tunnels began (+1) or ended (-1): activity."""
        self.active += delta
        self.touch()

    def wake_at(self) -> float:
        """When the supervisor must look again: the timeout, or the idle deadline."""
        if self.idle_timeout is None:
            return self.deadline
        if self.active:
            return self.deadline  # an exec's end touches the sandbox and wakes it
        return min(self.deadline, self.last_active + self.idle_timeout)

    def expired(self) -> bool:
        now = time.time()
        return now >= self.deadline or (
            self.idle_timeout is not None and not self.active
            and now >= self.last_active + self.idle_timeout)

    def pidns(self) -> int | None:
        try:
            return os.stat(f"/proc/{self.pid}/ns/pid").st_ino
        except OSError:
            return None

    def signal(self, sig: int) -> None:
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass


async def until_exit_activity_or(live: LiveSandbox, deadline: float) -> str:
    """Wait for the sandbox's process to end (``exited``), for it to be used (``activity``:
    its idle deadline moved) or for the wall-clock ``deadline``."""
    assert live.pidfd is not None
    pidfd, activity = live.pidfd, live.activity
    woke = "deadline"
    with trio.move_on_after(max(0.0, deadline - time.time())):
        async with trio.open_nursery() as nursery:
            async def exited() -> None:
                nonlocal woke
                await trio.lowlevel.wait_readable(pidfd)
                woke = "exited"
                nursery.cancel_scope.cancel()

            async def used() -> None:
                nonlocal woke
                await activity.wait()
                woke = "activity"
                nursery.cancel_scope.cancel()

            nursery.start_soon(exited)
            nursery.start_soon(used)
    return woke


async def first_of(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return as soon as one of ``waits`` returns."""
    async with trio.open_nursery() as nursery:
        async def run(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            nursery.cancel_scope.cancel()

        for wait in waits:
            nursery.start_soon(run, wait)
