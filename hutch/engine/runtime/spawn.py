"""Starting runtime commands with posix_spawn(3) instead of fork.

An exec is on the engine's hot path.  ``subprocess``/trio fork the whole daemon (copying its
page tables) in a worker thread; glibc's posix_spawn uses a vfork-style clone that copies
nothing, on the event loop's own thread.  The child's pipes become trio streams and its end
is awaited on a pidfd.  Every other descriptor of the daemon is close-on-exec (Python's
default), so nothing leaks into the runtime.
"""

from __future__ import annotations

import os
import signal

import trio


class SpawnedProcess:
    """A child process with piped stdio, owned by the task that spawned it."""

    #: never: the engine itself is its parent
    lost = False

    def __init__(self, pid: int, stdin: int | None, stdout: int | None,
                 stderr: int | None) -> None:
        self.pid = pid
        self._pidfd = os.pidfd_open(pid)
        self.stdin = trio.lowlevel.FdStream(stdin) if stdin is not None else None
        self.stdout = trio.lowlevel.FdStream(stdout) if stdout is not None else None
        self.stderr = trio.lowlevel.FdStream(stderr) if stderr is not None else None
        self.returncode: int | None = None

    async def wait(self) -> int:
        """Wait for the exit; returns the exit code, or -N for signal N (like subprocess)."""
        if self.returncode is None:
            await trio.lowlevel.wait_readable(self._pidfd)
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
            os.close(self._pidfd)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass


def pipe_or_null(pipe: bool, child_end: int) -> tuple[int | None, int]:
    """``(our end, the child's end)``: a pipe, or /dev/null for the child and nothing for us."""
    if not pipe:
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        return None, null
    r, w = os.pipe2(os.O_CLOEXEC)
    return (w, r) if child_end == 0 else (r, w)


def spawn(argv: list[str], *, stdin: bool, stdout: bool = True,
          stderr: bool = True) -> SpawnedProcess:
    """Start ``argv`` (looked up on PATH) with a pipe or /dev/null for each stdio stream."""
    in_w, in_r = pipe_or_null(stdin, 0)
    out_r, out_w = pipe_or_null(stdout, 1)
    err_r, err_w = pipe_or_null(stderr, 2)
    try:
        pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=[
            (os.POSIX_SPAWN_DUP2, in_r, 0),
            (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_DUP2, err_w, 2),
        ])
    except BaseException:
        for fd in (out_r, err_r, in_w):
            if fd is not None:
                os.close(fd)
        raise
    finally:
        for fd in (in_r, out_w, err_w):
            os.close(fd)
    return SpawnedProcess(pid, in_w, out_r, err_r)
