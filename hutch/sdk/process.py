"""``ContainerProcess``: a command running in a sandbox, as ``Sandbox.exec`` returns it.

Semantics follow Modal's: ``wait()`` returns the exit code (``128 + n`` for signal ``n``,
-1 when the exec's ``timeout`` ran out), ``poll()`` returns None while it runs, and
``returncode`` is only known after one of them has seen the end.  Output printed locally
(``StreamType.STDOUT``) is copied by tasks on hutch's event-loop thread; ``wait()``
returns only after they have printed everything.
"""

from __future__ import annotations

import concurrent.futures
import os
import select
from collections.abc import AsyncIterator, Iterator
from typing import Any, Generic, TypeVar

import anyio

from hutch.api import urls
from hutch.exception import Error, InvalidError
from hutch.sdk import syncbridge, terminal
from hutch.sdk.streams import EXEC_MAX_BUFFER_SIZE, StreamReader, StreamType, StreamWriter
from hutch.sdk.syncbridge import synchronize, synchronize_direct
from hutch.sdk.transport import client

T = TypeVar("T", str, bytes)

#: Seconds one wait request may last before the SDK asks again.
WAIT_SLICE = 55.0
#: What ``wait()`` returns for an exec stopped by its timeout (as Modal does).
EXEC_TIMEOUT_RETURNCODE = -1
#: Milliseconds the engine may hold an exec's answer for the command to end: a command that
#: ends that soon comes back with its exit status, and ``wait()`` needs no second call.
EXEC_SETTLE_MS = 3.0


def exec_returncode(info: dict[str, Any]) -> int | None:
    """The Modal-style return code of an engine exec record."""
    if info.get("state") != "exited":
        return None
    if info.get("timed_out"):
        return EXEC_TIMEOUT_RETURNCODE
    code: int | None = info.get("returncode")
    return code


class ContainerProcess(Generic[T]):
    """A process started by ``Sandbox.exec``: its streams, ``wait``, ``poll``, ``returncode``."""

    def __init__(self, info: dict[str, Any], *, text: bool, by_line: bool,
                 stdout: StreamType = StreamType.PIPE,
                 stderr: StreamType = StreamType.PIPE) -> None:
        self.object_id: str = info["exec_id"]
        self._returncode = exec_returncode(info)
        #: the size of its terminal (started with ``pty=True``), else None
        self._terminal: dict[str, int] | None = info.get("terminal")
        path = urls.EXEC_OUTPUT.format(exec_id=self.object_id)
        self.stdout: StreamReader[T] = StreamReader(path, 1, text=text, by_line=by_line,
                                                    stream_type=stdout)
        self.stderr: StreamReader[T] = StreamReader(path, 2, text=text, by_line=by_line,
                                                    stream_type=stderr)
        self.stdin = StreamWriter(urls.EXEC_STDIN.format(exec_id=self.object_id),
                                  EXEC_MAX_BUFFER_SIZE)
        self._printers: list[concurrent.futures.Future[None]] = []
        for reader, kind in ((self.stdout, stdout), (self.stderr, stderr)):
            if kind is StreamType.STDOUT:
                self._printers.append(syncbridge.start_background(reader._print_to_stdout))

    @property
    def returncode(self) -> int:
        """The exit code; :class:`InvalidError` until ``wait()`` or ``poll()`` saw the end."""
        if self._returncode is None:
            raise InvalidError(
                "You must call wait() before accessing the returncode. To poll for the status "
                "of a running process, use poll() instead."
            )
        return self._returncode

    @synchronize_direct
    async def poll(self) -> int | None:
        """The exit code if the process has ended, else None (never blocks)."""
        if self._returncode is None:
            info = await client().request("GET", urls.EXEC.format(exec_id=self.object_id))
            self._returncode = exec_returncode(info)
        return self._returncode

    @synchronize_direct
    async def wait(self) -> int:
        """Wait for the process to end; returns its exit code."""
        while self._returncode is None:
            info = await client().request("POST", urls.EXEC_WAIT.format(exec_id=self.object_id),
                                          params={"timeout": WAIT_SLICE})
            self._returncode = exec_returncode(info)
        for printer in self._printers:
            if syncbridge.direct():
                printer.result()  # a direct call may block its thread
            else:
                await anyio.to_thread.run_sync(printer.result)
        return self._returncode

    @wait.shortcut
    def _ended(self) -> int | None:
        """The exit code when it is known and no output is being printed here (a command
        that ended within the exec call's answer)."""
        return None if self._printers else self._returncode

    @synchronize_direct
    async def kill(self) -> int:
        """Kill the process and everything it started; returns its exit code (hutch only)."""
        info = await client().request("POST", urls.EXEC_KILL.format(exec_id=self.object_id))
        self._returncode = exec_returncode(info)
        assert self._returncode is not None
        return self._returncode

    @synchronize_direct
    async def resize(self, rows: int, cols: int) -> None:
        """Set the size of the process's terminal (``exec(pty=True)``); what runs on it gets
        SIGWINCH (a hutch extension)."""
        if self._terminal is None:
            raise InvalidError("resize: this process has no terminal (exec it with pty=True)")
        await client().request("PUT", urls.EXEC_TERMINAL.format(exec_id=self.object_id),
                               json_body={"rows": rows, "cols": cols})
        self._terminal = {"rows": rows, "cols": cols}

    @synchronize
    async def attach(self) -> None:
        """Connect the process to this one until it ends (Modal's ``attach``): its output
        to this process's stdout and stderr as it comes (streams given ``StreamType.STDOUT``
        or ``DEVNULL`` are left to that), this process's stdin to its stdin (end of input:
        its end), and no byte of stdin read after it ended.  A process on a terminal
        (``exec(pty=True)``) gets this terminal in raw mode, and its size as it changes
        (:mod:`hutch.sdk.terminal`)."""
        if self._terminal is not None:
            with terminal.raw_mode(0) as on_terminal:
                await self._attach(follow_size=on_terminal)
        else:
            await self._attach(follow_size=False)

    async def _attach(self, *, follow_size: bool) -> None:
        shown = {fd for fd, reader in ((1, self.stdout), (2, self.stderr))
                 if reader._stream_type is StreamType.PIPE}
        quit_r, quit_w = os.pipe()

        def read_stdin() -> bytes | None:
            """Stdin's next bytes (b"" at its end), or None once told to stop."""
            ready, _, _ = select.select([0, quit_r], [], [])
            return None if quit_r in ready else os.read(0, 65536)

        async def feed() -> None:
            try:
                while data := await anyio.to_thread.run_sync(read_stdin):
                    self.stdin.write(data)
                    await self.stdin.drain.aio()
                if data is not None:
                    self.stdin.write_eof()
                    await self.stdin.drain.aio()
            except (Error, OSError, ValueError):  # it has ended (or there is no stdin)
                return

        async def follow() -> None:
            size = terminal.local_size(0)
            try:
                while await anyio.to_thread.run_sync(terminal.wait_resize, quit_r):
                    now = terminal.local_size(0)
                    if now is not None and now != size:
                        size = now
                        await self.resize.aio(*now)
            except (Error, OSError):  # it has ended
                return

        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(feed)
                if follow_size:
                    tasks.start_soon(follow)
                try:
                    async for fd, data in self._events():
                        view = memoryview(data)
                        while view and fd in shown:
                            view = view[await anyio.to_thread.run_sync(os.write, fd, view):]
                finally:
                    os.write(quit_w, b"x")  # the reader stops before reading more
        finally:
            os.close(quit_w)
            os.close(quit_r)
        await self.wait.aio()

    def events(self) -> Iterator[tuple[int, bytes]]:
        """Both streams interleaved in the order produced, as ``(fd, data)``, until the
        process ends (a hutch extension, for terminals that show both as they come)."""
        return syncbridge.iterate_sync(self._events, direct=True)

    async def _events(self) -> AsyncIterator[tuple[int, bytes]]:
        async for event in client().stream_events(urls.EXEC_OUTPUT.format(exec_id=self.object_id)):
            if event.get("data") is not None:
                yield event["fd"], event["data"]

    def __repr__(self) -> str:
        return f"ContainerProcess(process_id={self.object_id!r})"
