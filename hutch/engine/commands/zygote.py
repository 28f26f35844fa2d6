"""The engine's side of the exec zygotes (:mod:`hutch.engine.commands.forkserver`).

:class:`ForkServer` starts the fork server once per engine and asks it for a zygote per
sandbox (:meth:`ForkServer.zygote`); a :class:`ZygoteLink` then starts the sandbox's
commands through it.  A command comes back as a :class:`ZygoteProcess`, which has the
shape of :class:`~hutch.engine.runtime.spawn.SpawnedProcess` (pid, trio streams for its
pipes, ``wait``, ``kill``), so an exec does not care which way it was started.

A link's reader task (in the sandbox manager's nursery) reads the zygote's frames and wakes
the process they name.  A zygote that dies (the sandbox's OOM killer may pick it) ends its
link: the commands it was watching are reported killed, and the next exec makes a new one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from hutch.engine.commands import forkserver
from hutch.engine.commands.frames import FrameReader, send_frame
from hutch.engine.kernel import fdio
from hutch.engine.network.netns import NetnsSetupFailed
from hutch.engine.runtime import ociconfig
from hutch.engine.runtime.spawn import pipe_or_null

log = logging.getLogger("hutch.zygote")

#: Seconds a new zygote has to report that it joined its sandbox.
READY_TIMEOUT = 10.0
#: Seconds to wait for a zygote to exit once its sandbox is gone (its cgroup must empty).
EXIT_TIMEOUT = 2.0


class ZygoteError(Exception):
    """A zygote could not be made (or died): the message says which step failed."""


class TerminalError(ZygoteError):
    """The sandbox gave no terminal (its ``/dev/ptmx`` is gone or not the device): the
    sandbox's doing, and its zygote goes on."""


class ZygoteProcess:
    """One command started by a zygote, as the exec that owns it sees it."""

    def __init__(self, link: ZygoteLink, exec_id: str, stdin: int | None, stdout: int | None,
                 stderr: int | None) -> None:
        self.link = link
        self.exec_id = exec_id
        self.pid: int | None = None
        self.pidfd: int | None = None
        self.stdin = trio.lowlevel.FdStream(stdin) if stdin is not None else None
        self.stdout = trio.lowlevel.FdStream(stdout) if stdout is not None else None
        self.stderr = trio.lowlevel.FdStream(stderr) if stderr is not None else None
        self.returncode: int | None = None
        #: the zygote died while this ran: the command (and what it started) may still run,
        #: and perhaps unreported, so its owner kills it by its marker
        self.lost = False
        self.ended = trio.Event()
        self._kill_when_running = False
        #: the master end of its terminal (an exec with a pty), which the engine keeps
        self.terminal: int | None = None
        #: the terminal's other end until the command has it, or why there is none
        self._peer: int | str | None = None
        self._pty_ready = trio.Event()

    def _got_pty(self, fds: list[int], error: str | None) -> None:
        if error is not None or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            self._peer = error or "the zygote sent no terminal"
        else:
            self.terminal, self._peer = fds
        self._pty_ready.set()

    def _running(self, pid: int, pidfd: int) -> None:
        self.pid, self.pidfd = pid, pidfd
        if self._kill_when_running:
            self.kill()

    def _exited(self, code: int) -> None:
        self.returncode = code
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        self.close_terminal()  # (its output stream holds the terminal until read to the end)
        self.ended.set()

    def close_terminal(self) -> None:
        fd, self.terminal = self.terminal, None
        if fd is not None:
            os.close(fd)

    async def wait(self) -> int:
        """Wait for the end; the exit code, or -N for signal N (like subprocess)."""
        await self.ended.wait()
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        """SIGKILL the command (as soon as it runs, if the zygote has not reported it yet)."""
        self._kill_when_running = True
        if self.pidfd is not None and self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)


class ZygoteLink:
    """The engine's connection to one sandbox's zygote."""

    def __init__(self, sock: socket.socket, pid: int, frames: FrameReader) -> None:
        #: non-blocking; read through ``frames`` (which may hold what came after "ready")
        self.sock = sock
        self.frames = frames
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self.processes: dict[str, ZygoteProcess] = {}
        self.alive = True
        #: when a command was last handed to it (trio's clock)
        self.last_used = trio.current_time()
        #: kept however long it is idle (it belongs to a sandbox waiting in a warm pool)
        self.keep = False
        self._send_lock = trio.Lock()

    async def spawn(self, exec_id: str, argv: list[str], env: dict[str, str], cwd: str, *,
                    stdin: bool, stdout: bool, stderr: bool, user: str | None = None,
                    pty: tuple[int, int] | None = None) -> ZygoteProcess:
        """Start ``argv`` (as ``user``; on a new terminal of ``pty`` rows and columns).
        Returns once the zygote has the request: it reports the command's pid (or its
        failure to start, as exit code 126 or 127) moments later, while the caller answers
        its own client."""
        if not self.alive:
            raise ZygoteError("the sandbox's zygote has exited")
        request: dict[str, Any] = {"op": "spawn", "id": exec_id, "argv": argv, "env": env,
                                   "cwd": cwd}
        if user is not None:
            request["user"] = user
        if pty is not None:
            return await self._spawn_on_terminal(request, pty)
        in_w, in_r = pipe_or_null(stdin, 0)
        out_r, out_w = pipe_or_null(stdout, 1)
        err_r, err_w = pipe_or_null(stderr, 2)
        process = ZygoteProcess(self, exec_id, in_w, out_r, err_r)
        self.processes[exec_id] = process
        try:
            await self._send(request, [in_r, out_w, err_w])
        except BaseException:
            self.processes.pop(exec_id, None)
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    await stream.aclose()
            raise
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        return process

    async def _spawn_on_terminal(self, request: dict[str, Any], size: tuple[int, int]
                                 ) -> ZygoteProcess:
        """Ask the zygote for a terminal of the sandbox's, then start the command on its
        peer end; the command's stdin and stdout are the master end (its stderr goes to the
        terminal too, as a terminal has one output)."""
        exec_id = request["id"]
        process = ZygoteProcess(self, exec_id, None, None, None)
        self.processes[exec_id] = process
        try:
            await self._send({"op": "pty", "id": exec_id, "rows": size[0], "cols": size[1]})
            with trio.move_on_after(READY_TIMEOUT):
                await process._pty_ready.wait()
            if process.terminal is None or not isinstance(process._peer, int):
                if not self.alive or not process._pty_ready.is_set():
                    raise ZygoteError(str(process._peer or "no terminal came in time"))
                raise TerminalError(str(process._peer))
            process.stdout = trio.lowlevel.FdStream(os.dup(process.terminal))
            process.stdin = trio.lowlevel.FdStream(os.dup(process.terminal))
            peer = process._peer
            await self._send({**request, "terminal": True}, [peer, peer, peer])
        except BaseException:
            self.processes.pop(exec_id, None)
            process.close_terminal()
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    await stream.aclose()
            raise
        finally:
            if isinstance(process._peer, int):
                os.close(process._peer)
            process._peer = None
        return process

    async def _send(self, obj: dict[str, Any], fds: list[int] | None = None) -> None:
        try:  # (through the scheduler only when another send holds the socket, or it is full)
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()
        try:
            await send_frame(self.sock, obj, fds)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.abandon()
            raise ZygoteError(f"the sandbox's zygote is gone: {exc}") from exc
        finally:
            self._send_lock.release()

    def abandon(self) -> None:
        """Give the zygote up after a failed send (part of a frame may have gone: it would
        wait for the rest for good): killed, so that its reader sees the end and reports
        every exec it ran as lost."""
        self.alive = False
        with contextlib.suppress(ProcessLookupError, OSError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    async def read_frames(self) -> None:
        """Dispatch the zygote's frames until it exits (the manager's nursery runs this)."""
        try:
            while True:
                try:
                    obj, fds = await self.frames.next()
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                if obj is None:
                    return
                process = self.processes.get(obj.get("id", ""))
                if process is not None and ("pty" in obj or "pty_error" in obj):
                    process._got_pty(fds, obj.get("pty_error"))
                    continue
                if process is not None and "pid" in obj and fds:
                    process._running(int(obj["pid"]), fds.pop(0))
                elif process is not None and "exit" in obj:
                    self.last_used = trio.current_time()
                    self.processes.pop(process.exec_id, None)
                    process._exited(int(obj["exit"]))
                for fd in fds:  # (descriptors no frame of the protocol carries)
                    os.close(fd)
        finally:
            self.frames.close()
            self.alive = False
            fdio.close(self.sock)
            for process in list(self.processes.values()):
                if not process._pty_ready.is_set():
                    process._got_pty([], "the sandbox's zygote exited")
                log.warning("zygote %d ended while exec %s ran", self.pid, process.exec_id)
                process.lost = True
                process.kill()
                process._exited(-signal.SIGKILL)
            self.processes.clear()

    async def close(self) -> None:
        """End the zygote, and wait (briefly) for it to leave the sandbox's cgroup.  It is
        killed, not asked: it has nothing to finish (nothing it started runs, or its sandbox
        has ended), and a zygote wedged in the sandbox's files would never see a hang-up.
        The reader task sees its end and closes the socket."""
        self.alive = False
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        with trio.move_on_after(EXIT_TIMEOUT):
            await trio.lowlevel.wait_readable(self.pidfd)
        os.close(self.pidfd)


@dataclass(frozen=True)
class Namespaces:
    """Descriptors of a sandbox's namespaces made by the fork server's child."""

    net: int
    #: its own user namespace, where it has one
    user: int | None = None


class ForkServer:
    """The engine's fork server process: started once, asked for one zygote per sandbox
    that runs execs, and for every sandbox's network namespace.  ``seccomp_bpf``: the
    filter zygotes load; None where execs go through the runtime (no zygotes)."""

    def __init__(self, capabilities: int, seccomp_bpf: str | None) -> None:
        self.capabilities = capabilities
        self.seccomp_bpf = seccomp_bpf
        self._sock: socket.socket | None = None
        self._pid: int | None = None
        self._lock = trio.Lock()

    @property
    def makes_zygotes(self) -> bool:
        return self.seccomp_bpf is not None

    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            self._pid = os.posix_spawn(
                sys.executable,
                [sys.executable, "-I", "-S", str(Path(forkserver.__file__)), "3",
                 str(ociconfig.SANDBOX_NOFILE)],
                {"PATH": os.environ.get("PATH", forkserver.DEFAULT_PATH)},
                file_actions=[(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1),
                              (os.POSIX_SPAWN_DUP2, theirs.fileno(), 3)])
        finally:
            os.close(null)
            theirs.close()
        # A fork server that reads nothing must not stop the engine's event loop: requests
        # go through trio (frames.send_frame), and one stuck for 10 s replaces it.
        ours.setblocking(False)
        self._sock = ours
        log.info("fork server %d started", self._pid)

    def stop(self) -> None:
        if self._sock is not None:
            fdio.close(self._sock)
            self._sock = None
        if self._pid is not None:
            # it exits once its socket closes; killed first so that reaping never waits
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._pid, 0)
            self._pid = None

    def gone(self) -> bool:
        """Whether the fork server has died (it is reaped then, and the next request starts
        another): a zygote it was making when it died reports nothing, which is no fault of
        the sandbox's."""
        if self._pid is None:
            return True
        try:
            pid, _ = os.waitpid(self._pid, os.WNOHANG)
        except ChildProcessError:
            pid = self._pid
        if pid == 0:
            return False
        self._pid = None
        self.stop()
        log.warning("fork server died; the next zygote starts another")
        return True

    async def _request(self, request: dict[str, Any], fds: list[int]) -> None:
        """Send ``request`` with ``fds``, starting the fork server again where it is gone."""
        async with self._lock:
            for attempt in (1, 2):
                if self._sock is None:
                    self.start()
                assert self._sock is not None
                try:
                    await send_frame(self._sock, request, fds)
                    return
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    log.warning("fork server gone (%s); starting another", exc)
                    self.stop()
                    if attempt == 2:
                        raise ZygoteError(f"the fork server cannot be reached: {exc}") \
                            from exc

    async def zygote(self, init_pidfd: int, cgroup_procs: list[str], *, userns: bool = False
                     ) -> ZygoteLink:
        """A zygote joined to the sandbox whose init ``init_pidfd`` refers to (``userns``:
        to its user namespace too, where it has one of its own)."""
        if self.seccomp_bpf is None:
            raise ZygoteError("this engine makes no zygotes (execs use the runtime's exec)")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await self._request({"cgroup_procs": cgroup_procs, "caps": self.capabilities,
                                 "seccomp": self.seccomp_bpf, "userns": userns},
                                [init_pidfd, theirs.fileno()])
        finally:
            theirs.close()
        ours.setblocking(False)
        frames = FrameReader(ours)
        failure = f"no zygote was ready within {READY_TIMEOUT:.0f} s"
        link = None
        try:
            with trio.move_on_after(READY_TIMEOUT):
                try:
                    first, fds = await frames.next()
                except trio.BrokenResourceError as exc:
                    first, fds = {"error": str(exc)}, []
                for fd in fds:
                    os.close(fd)
                if first is not None and "ready" in first:
                    link = ZygoteLink(ours, int(first["ready"]), frames)
                    return link
                failure = (first or {}).get("error") or "the zygote exited at once"
        finally:
            if link is None:  # (failed, timed out or cancelled: the socket is nobody's)
                frames.close()
                fdio.close(ours)
        raise ZygoteError(failure)

    async def network_namespace(
            self, firewall: str | None, ids: tuple[str, dict[str, int]] | None = None, *,
            task_status: trio.TaskStatus[Namespaces] = trio.TASK_STATUS_IGNORED) -> None:
        """Make a sandbox's network namespace in a child of the fork server
        (:mod:`.nsmaker`): ``nursery.start`` gives descriptors as soon as it exists (the
        caller closes them: the network namespace's once the runtime has joined it), and
        this returns once its loopback is up and the nftables ``firewall`` (if any) is
        loaded.  ``ids``: the map and ``/proc/sys/user`` counts of a user namespace of the
        sandbox's own, made first, which the network namespace then belongs to.  About
        2 ms, none of it on the daemon's interpreter."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        request: dict[str, Any] = {"op": "netns", "firewall": firewall}
        if ids is not None:
            request.update(map=ids[0], counts=ids[1])
        try:
            await self._request(request, [theirs.fileno()])
        except ZygoteError as exc:
            ours.close()
            raise NetnsSetupFailed(str(exc)) from exc
        finally:
            theirs.close()
        wanted = 1 if ids is None else 2
        ours.setblocking(False)
        frames = FrameReader(ours)
        try:
            with trio.move_on_after(READY_TIMEOUT):
                reply, fds = await frames.next()
                if reply is not None and reply.get("made") and len(fds) == wanted:
                    task_status.started(Namespaces(fds[0], fds[1] if ids is not None
                                                   else None))
                    reply, extra = await frames.next()
                    for fd in extra:
                        os.close(fd)
                else:
                    for fd in fds:
                        os.close(fd)
                if reply is not None and reply.get("configured"):
                    return
                raise NetnsSetupFailed("could not set up the sandbox's namespaces: "
                                       + ((reply or {}).get("error") or "their maker exited"))
            raise NetnsSetupFailed("the sandbox's namespaces were not set up within "
                                   f"{READY_TIMEOUT:.0f} s")
        except trio.BrokenResourceError as exc:
            raise NetnsSetupFailed(f"could not set up the sandbox's namespaces: {exc}") \
                from exc
        finally:
            frames.close()
            fdio.close(ours)
