"""Pseudo-terminals for execs, and starting a command on one or as another user.

``exec(..., pty=True)`` gives the command a terminal of the sandbox's own: the zygote
(:mod:`hutch.engine.commands.forkserver`) opens ``/dev/ptmx`` after joining the sandbox's
mount namespace, so the terminal belongs to the sandbox's devpts instance (``/dev/pts/N``
inside, nothing on the host's), and hands the engine the master end.  The peer is opened
from the master (``TIOCGPTPEER``), never by a path the sandbox could have swapped.

A command on a terminal must lead a session of its own with the terminal as its controlling
terminal (job control, Ctrl-C as SIGINT to its foreground group), and ``exec(user=...)``
must change ids: ``posix_spawn`` can do neither, so such a command is started with
``fork`` + ``execve`` here; every other command keeps the spawn.  Measured end to end
(``sb.exec("true").wait()``, medians of 60): 1.5-1.8 ms spawned, 3.5 ms with ``user=`` or
``pty=True``; a bare fork+exec costs 1.4 ms against 0.54 ms for a spawn in a ``-I -S``
Python like the zygote (0.3 ms of it the signal resets).  A failure before ``execve``
comes back over a close-on-exec pipe, as :mod:`subprocess` reports it.  Standard library
only: the zygote imports nothing else.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import stat
import struct
import termios
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

#: ioctl numbers glibc has and Python's termios lacks (linux/asm-generic/ioctls.h).
TIOCGPTPEER = 0x5441
TIOCSPTLCK = 0x40045431
#: The ptmx device's numbers (major 5, minor 2), which ``/dev/ptmx`` must be.
PTMX_DEV = (5, 2)
#: Seconds a forked command has to reach its ``execve`` (it takes about a millisecond).
#: Why a bound: until then it is a process of the sandbox that the sandbox's root may
#: SIGSTOP, and the single-threaded zygote waiting on it would hold every later exec.
START_TIMEOUT = 10.0


@dataclass(frozen=True)
class Ids:
    """The ids a command runs with (``exec(user=...)``)."""

    uid: int
    gid: int
    groups: tuple[int, ...]


def open_pty(rows: int, cols: int) -> tuple[int, int]:
    """A new terminal of this mount namespace's devpts: ``(master, peer)``, both
    close-on-exec, the master non-blocking, its size ``rows`` x ``cols``.

    ``/dev/ptmx`` is the sandbox's to change: it is opened without blocking (a FIFO put there
    must not hang the zygote) and must turn out to be the ptmx device."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(master)
        if not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev),
                                             os.minor(st.st_rdev)) != PTMX_DEV:
            raise OSError(errno.ENODEV, "/dev/ptmx is not the pseudo-terminal multiplexer")
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))  # unlockpt(3)
        peer = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        set_size(master, rows, cols)
    except BaseException:
        os.close(master)
        raise
    return master, peer


def set_size(fd: int, rows: int, cols: int) -> None:
    """Set a terminal's size: its foreground process group gets SIGWINCH."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def get_size(fd: int) -> tuple[int, int]:
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    return rows, cols


def fork_exec(path: str, argv: Sequence[str], env: dict[str, str], cwd: str,
              stdio: Sequence[int], *, terminal: bool, ids: Ids | None,
              default_signals: Iterable[int]) -> int:
    """Start ``path`` with ``stdio`` as its fds 0-2; returns its pid once it has called
    ``execve``.  ``terminal``: it leads a new session whose controlling terminal is fd 0.
    ``ids``: it runs with those (its capabilities go, as a change from uid 0 drops them).

    Raises OSError (with the step that failed) when it could not be started; the child has
    been reaped then."""
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
    except BaseException:
        os.close(report_r)
        os.close(report_w)
        raise
    if pid == 0:  # pragma: no cover - the child; its failures come back through the pipe
        code = 127
        try:
            os.close(report_r)
            _child(path, argv, env, cwd, stdio, terminal, ids, default_signals)
        except OSError as exc:
            code = 127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126
            message = f"{exc.errno or 0}:{exc.strerror or exc}"
            os.write(report_w, message.encode(errors="replace")[:4000])
        finally:
            os._exit(code)
    os.close(report_w)
    try:
        report = b""
        end = time.monotonic() + START_TIMEOUT
        poller = select.poll()  # (not select(): descriptors may be numbered past 1023)
        poller.register(report_r, select.POLLIN)
        while True:
            ready = poller.poll(max(0.0, end - time.monotonic()) * 1000)
            if not ready:  # stopped before its execve (by the sandbox's own processes)
                os.kill(pid, signal.SIGKILL)
                report = f"{errno.ETIMEDOUT}:the command did not start within " \
                         f"{START_TIMEOUT:.0f} s (stopped before it could run)".encode()
                break
            chunk = os.read(report_r, 4096)
            if not chunk:
                break
            report += chunk
    finally:
        os.close(report_r)
    if report:
        os.waitpid(pid, 0)
        number, _, message = report.decode(errors="replace").partition(":")
        raise OSError(int(number) if number.isdigit() else 0, message)
    return pid


def _child(path: str, argv: Sequence[str], env: dict[str, str], cwd: str,
           stdio: Sequence[int], terminal: bool, ids: Ids | None,
           default_signals: Iterable[int]) -> None:
    """What the child does before ``execve`` (every step's error names the step)."""
    for number in default_signals:
        try:
            signal.signal(number, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # the C library's own (32, 33): not Python's to set
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    # out of the way of 0-2 first, so that no dup2 overwrites a later source
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in stdio]
    for target, fd in enumerate(high):
        os.dup2(fd, target, inheritable=True)
    if terminal:
        _step("setsid", os.setsid)
        _step("making the terminal the controlling one",
              lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    if ids is not None:
        if terminal:  # the user's terminal, as login(1) and sshd make it
            try:
                os.fchown(0, ids.uid, -1)
            except OSError:
                pass
        try:
            os.setgroups(list(ids.groups))
        except PermissionError:
            pass  # a single-id map denies setgroups: the process has no groups to drop
        _step(f"setting the group id {ids.gid}", lambda: os.setresgid(ids.gid, ids.gid, ids.gid))
        _step(f"setting the user id {ids.uid}", lambda: os.setresuid(ids.uid, ids.uid, ids.uid))
    _step(f"chdir `{cwd}`", lambda: os.chdir(cwd))
    _step(f"exec `{path}`", lambda: os.execve(path, list(argv), env))


def _step(what: str, call: Callable[[], object]) -> None:
    try:
        call()
    except OSError as exc:
        raise OSError(exc.errno, f"{what}: {exc.strerror or exc}") from None
