"""One command running in a sandbox: its OCI exec process, output buffer, stdin and timeout.

Output is queued per stream until a reader consumes it (a late reader still sees
everything); unread output beyond ``MAX_BUFFERED`` pauses the pipes, as a full pipe would.
Why one :class:`OutputBudget` per sandbox (``SANDBOX_BUFFERED``, each chunk counted with its
overhead): unread output is the sandbox's to pay for, not the engine's (40 execs nobody
read, writing 100 bytes at a time, grew the engine by 751 MiB before).  A timeout kills the
exec's whole process tree and records 124; ``EOF_GRACE`` after a kill the engine closes its
ends of the pipes, so a process that escaped the tree cannot keep ``wait()`` blocked.
Details: docs/design.md, "Exec output"; docs/security.md, "The engine's own processes".
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import trio

from hutch.api import exitcodes
from hutch.engine.commands import terminals
from hutch.engine.commands.starter import StartedCommand
from hutch.engine.errors import Conflict
from hutch.engine.kernel import fdio, proctree

log = logging.getLogger("hutch.exec")

#: Seconds a kill waits for the runtime to report the exec's pid.
PID_WAIT = 5.0
#: Seconds an exec's pipes may stay open after its process tree was killed: whatever still
#: holds them escaped the kill, and the exec's end does not wait for it.
EOF_GRACE = 1.0
#: Output beyond this many unread bytes pauses the pipes until a reader catches up.
MAX_BUFFERED = 16 << 20
#: Unread output all the execs of one sandbox may hold in the engine together.
SANDBOX_BUFFERED = 64 << 20
#: What one exec may always hold, whatever the others hold (its reader is never starved).
EXEC_FLOOR = 256 << 10
#: Bytes a chunk costs the engine beyond its data (bytes object, list, deque slot).
CHUNK_OVERHEAD = 128
#: Bytes one read of an exec's pipe takes at most.
READ_SIZE = 65536
#: A chunk grows by merging later writes until it holds this many bytes.
CHUNK_MERGE = 64 << 10


class OutputBudget:
    """The unread output a sandbox's execs hold in the engine, and its limit."""

    def __init__(self, limit: int = SANDBOX_BUFFERED) -> None:
        self.limit = limit
        self.used = 0
        self._released = trio.Event()

    def take(self, size: int) -> None:
        self.used += size

    def give(self, size: int) -> None:
        self.used -= size
        self._released.set()
        self._released = trio.Event()

    def spent(self) -> bool:
        return self.used > self.limit

    async def released(self) -> None:
        """Wait until some of it is given back (read or dropped)."""
        await self._released.wait()


class ExecSession:
    def __init__(self, exec_id: str, sandbox_id: str, argv: list[str],
                 command: StartedCommand, marker: bytes, pidns: int | None,
                 timeout: float | None, budget: OutputBudget | None = None,
                 size: tuple[int, int] | None = None) -> None:
        self.exec_id = exec_id
        self.sandbox_id = sandbox_id
        self.argv = argv
        self.command = command
        self.process = command.process
        self.marker = marker
        self.pidns = pidns
        self.timeout = timeout
        self.budget = budget if budget is not None else OutputBudget()
        #: rows and columns of its terminal (None: it has pipes, not a terminal)
        self.size = size
        #: per stream: [sequence number, data] chunks, the last one still growing
        self._queues: dict[int, deque[list[Any]]] = {1: deque(), 2: deque()}
        self._seq = 0
        #: what the unread chunks cost the engine (data and CHUNK_OVERHEAD each)
        self.unread = 0
        #: output is dropped as it comes (the sandbox has ended: nobody may read it)
        self._dropping = False
        self.returncode: int | None = None
        self.timed_out = False
        #: the state its row in the engine's state was written with ("running" or
        #: "exited"; None: not yet), by the lifecycle's ``ExecRegistry.record``
        self.recorded: str | None = None
        self._stdin_closed = False
        self.done = trio.Event()
        self._changed = trio.Event()
        #: whether a kill (or the timeout) has killed the process tree
        self._killed = False
        #: pumps still reading; ``_wake`` is set (and replaced) when one ends or on a kill
        self._pumping = 0
        self._wake = trio.Event()

    # output ----------------------------------------------------------------------------
    def _append(self, fd: int, data: bytes) -> None:
        if self._dropping:
            return
        queue = self._queues[fd]
        if queue and queue[-1][0] == self._seq and len(queue[-1][1]) < CHUNK_MERGE:
            queue[-1][1] += data  # the newest chunk of all: nothing was written in between
            cost = len(data)
        else:
            self._seq += 1
            queue.append([self._seq, bytearray(data)])
            cost = len(data) + CHUNK_OVERHEAD
        self.unread += cost
        self.budget.take(cost)
        self._changed.set()
        self._changed = trio.Event()

    def _consume(self, fd: int) -> bytes:
        _, data = self._queues[fd].popleft()
        cost = len(data) + CHUNK_OVERHEAD
        self.unread -= cost
        self.budget.give(cost)
        return bytes(data)

    def _must_pause(self) -> bool:
        return not self._dropping and (
            self.unread > MAX_BUFFERED or (self.unread > EXEC_FLOOR and self.budget.spent()))

    def discard(self) -> None:
        """Drop the unread output, and whatever comes after it (the sandbox has ended):
        readers see the end, and pipes paused for want of a reader run to their end, so
        the exec finishes instead of holding its pipes and buffers for good."""
        self._dropping = True
        for queue in self._queues.values():
            queue.clear()
        self.budget.give(self.unread)
        self.unread = 0
        self._changed.set()
        self._changed = trio.Event()

    async def _pump(self, stream: trio.lowlevel.FdStream | None, fd: int) -> None:
        """Read ``stream`` to its end into the output queue.  Its descriptor is read
        directly (``FdStream.receive_some`` passes through the scheduler twice per read:
        a command that prints nothing should cost no more than the wait for its end)."""
        if stream is None:
            return
        async with stream:
            source = stream.fileno()
            while True:
                try:
                    data = await fdio.receive_some(source, READ_SIZE)
                except trio.BrokenResourceError:
                    if self.size is None:
                        raise
                    return  # EIO: the terminal's last holder closed it, its output's end
                if not data:
                    return
                self._append(fd, data)
                while self._must_pause():
                    await self.budget.released()
                await trio.lowlevel.checkpoint()  # (a command that never stops writing)

    async def follow(self, fds: tuple[int, ...] = (1, 2)) -> AsyncIterator[tuple[int, bytes]]:
        """Consume ``(fd, data)`` chunks of ``fds`` in the order produced, until the end.

        Each chunk is delivered once (like reading a pipe) and then dropped, so the engine
        holds at most ``MAX_BUFFERED`` bytes of output per exec.
        """
        while True:
            heads = [(q[0][0], fd) for fd in fds if (q := self._queues[fd])]
            if heads:
                _, fd = min(heads)
                yield fd, self._consume(fd)
                continue
            if self.done.is_set():
                return
            await self._changed.wait()

    # stdin ------------------------------------------------------------------------------
    async def write_stdin(self, data: bytes, eof: bool) -> None:
        """Write ``data``; ``eof`` then closes stdin (a no-op once closed or exited)."""
        stdin = self.process.stdin
        if stdin is None:
            raise Conflict("this exec was started without stdin")
        if not data and (self.done.is_set() or self._stdin_closed):
            return
        if self.done.is_set():
            raise Conflict("the process has already exited")
        try:
            if data:
                await stdin.send_all(data)
            if eof and self.size is not None:
                await stdin.send_all(b"\x04")  # a terminal's end of input is ^D, not a close
            elif eof:
                self._stdin_closed = True
                await stdin.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise Conflict(f"stdin is closed: {exc}") from exc

    def resize(self, rows: int, cols: int) -> None:
        """Set its terminal's size; the programs on it get SIGWINCH (a no-op once it ended)."""
        if self.size is None:
            raise Conflict("this exec has no terminal (start it with pty=True)")
        self.size = (rows, cols)
        fd = self.command.terminal()
        if fd is not None:
            terminals.set_size(fd, rows, cols)

    # lifetime ---------------------------------------------------------------------------
    def pid(self) -> int | None:
        return self.command.pid()

    async def kill(self) -> None:
        """Kill the exec's process tree, and wait for the end.

        Right after ``POST /execs`` a runtime may not have written the pid file yet: wait
        for it (or for the runtime to exit) before killing, so that a kill is never lost.
        A runtime that writes no pid within ``PID_WAIT`` seconds is killed itself.
        """
        with trio.move_on_after(PID_WAIT):
            while self.pid() is None and self.process.returncode is None:
                await trio.sleep(0.002)
        await trio.to_thread.run_sync(self.kill_tree)
        if self.pid() is None:
            self.process.kill()
        self._killed = True
        self._poke()

    def kill_tree(self) -> None:
        """Kill the process, its descendants and whatever in the sandbox carries its
        marker (by the marker alone while its pid is unknown).  Only processes of the
        sandbox's pid namespace are signalled, each through a pidfd (its pid may be
        another process's by now: :mod:`hutch.engine.kernel.proctree`)."""
        pid = self.pid() if self.process.returncode is None else None
        if self.pidns is None and self.command.pidfd() is None:
            return  # nothing here can be told apart from a host process
        proctree.kill_tree(pid if pid is not None else 0, self.marker, self.pidns,
                           self.command.pidfd())

    async def _pump_counted(self, stream: trio.lowlevel.FdStream, fd: int) -> None:
        try:
            await self._pump(stream, fd)
        finally:
            self._pumping -= 1
            self._poke()

    def _poke(self) -> None:
        self._wake.set()
        self._wake = trio.Event()

    async def _until_pipes_end(self, pumps: trio.CancelScope) -> None:
        """Wait for both pipes' end; once the exec was killed, for ``EOF_GRACE`` at most: a
        process that escaped the kill may hold them open for as long as the sandbox runs."""
        while self._pumping:
            if self._killed:
                with trio.move_on_after(EOF_GRACE):
                    while self._pumping:
                        await self._wake.wait()
                if self._pumping:
                    log.info("exec %s: its pipes are still held after its kill; closing "
                             "them", self.exec_id)
                    pumps.cancel()  # the pumps close the engine's ends as they leave
                return
            await self._wake.wait()

    async def run(self) -> int:
        """Pump output until the exec ends (or times out); returns its exit code."""
        deadline = math.inf if self.timeout is None else trio.current_time() + self.timeout
        try:
            async with trio.open_nursery() as nursery:
                for stream, fd in ((self.process.stdout, 1), (self.process.stderr, 2)):
                    if stream is not None:
                        self._pumping += 1
                        nursery.start_soon(self._pump_counted, stream, fd)
                with trio.move_on_at(deadline) as scope:
                    await self.process.wait()
                if self.process.lost:  # what it started may run on: end it by its marker
                    await trio.to_thread.run_sync(self.kill_tree)
                if scope.cancelled_caught:
                    self.timed_out = True
                    await self.kill()
                    with trio.CancelScope(shield=True):
                        await self.process.wait()
                await self._until_pipes_end(nursery.cancel_scope)
        finally:
            if self.process.returncode is None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self.kill_tree)
                    self.process.kill()
                    await self.process.wait()
            if self.process.stdin is not None:
                with trio.CancelScope(shield=True):
                    await self.process.stdin.aclose()
            self.command.remove_leftovers()
        rc = self.process.returncode
        assert rc is not None
        self.returncode = exitcodes.TIMED_OUT if self.timed_out else (128 - rc if rc < 0 else rc)
        self.done.set()
        self._changed.set()
        return self.returncode
