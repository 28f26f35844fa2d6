"""The engine's fork server and the exec zygotes it forks, one per sandbox that runs execs;
it also forks the makers of sandboxes' namespaces (:mod:`.nsmaker`).

Why: ``crun exec`` costs about 7 ms a command (it re-reads the container's state, forks
twice, joins the namespaces and loads the seccomp filter); a *zygote* does that once per
sandbox, and each command is then one ``posix_spawn`` from it.  The fork server is one
small single-threaded process per engine, run by path so it imports the standard library
only (forking the engine itself would copy its heap and its threads' locks).  All three
talk over stream sockets: frames of a 4-byte big-endian length and a JSON object, file
descriptors riding on the length.
Details (why the zygote is out of the sandbox's pid namespace; the frames):
docs/design.md, "Execs: the zygote".
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import errno
import functools
import gc
import json
import os
import resource
import select
import selectors
import signal
import socket
import stat
import struct
import sys
from collections.abc import Callable
from typing import Any

if __name__ == "__main__":  # run by path (-I): its siblings are importable by their own names
    _HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path += [_HERE, os.path.join(os.path.dirname(_HERE), "network")]  # (after the stdlib)
try:
    from hutch.engine.commands import nsmaker, terminals, userids
    from hutch.engine.network import nsconfig
except ImportError:  # pragma: no cover - the fork server's own process
    import nsconfig  # type: ignore[no-redef,import-not-found]
    import nsmaker  # type: ignore[no-redef,import-not-found]
    import terminals  # type: ignore[no-redef,import-not-found]
    import userids  # type: ignore[no-redef,import-not-found]

HEADER = struct.Struct("!I")
MAX_FDS = 4
#: Seconds the fork server waits for a namespace maker to unshare its user namespace.
MAP_TIMEOUT = 5.0
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = nsmaker.CLONE_NEWNET
CLONE_NEWUSER = nsmaker.CLONE_NEWUSER
#: The sandbox namespaces a zygote joins (every sandbox has its own of each); and, for a
#: sandbox with ids of its own, its user namespace last (its network namespace belongs to
#: the engine's, which a process of the sandbox's could no longer join).
JOIN = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET
PR_CAPBSET_DROP = 24
PR_SET_DUMPABLE = nsmaker.PR_SET_DUMPABLE
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Signals a command starts with at their default action, whatever the zygote inherited
#: (Python ignores SIGPIPE and SIGXFSZ; an engine started from a shell's background job
#: ignores SIGINT and SIGQUIT), as the runtime gives a container's processes.
RESET_SIGNALS = tuple(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP})

_libc = nsmaker.libc
SetupError = nsmaker.SetupError
_check = nsmaker.check


# framing ----------------------------------------------------------------------------------
def send(sock: socket.socket, obj: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(obj).encode()
    frame = HEADER.pack(len(data)) + data
    sent = 0
    if fds:
        sent = sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                       struct.pack(f"{len(fds)}i", *fds))])
    if sent < len(frame):  # (an empty send to a peer that has read and gone is EPIPE)
        sock.sendall(frame[sent:])


def _exactly(sock: socket.socket, size: int, head: bytes = b"") -> bytes | None:
    data = bytearray(head)
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def receive(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """The next frame and its fds; ``(None, [])`` at the end of the stream."""
    # (socket.recv_fds would drop the flags: received fds must not leak into commands)
    head, ancdata, _, _ = sock.recvmsg(HEADER.size, socket.CMSG_LEN(MAX_FDS * 4),
                                       socket.MSG_CMSG_CLOEXEC)
    fds = unpack_fds(ancdata)
    if not head:
        return None, fds
    whole = _exactly(sock, HEADER.size, head)
    body = _exactly(sock, HEADER.unpack(whole)[0]) if whole is not None else None
    if body is None:
        return None, fds
    obj: dict[str, Any] = json.loads(body)
    return obj, fds


def unpack_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(struct.unpack(f"{len(data) // 4}i", data[:len(data) - len(data) % 4]))
    return fds


# the fork server --------------------------------------------------------------------------
def serve(sock: socket.socket) -> None:
    """Fork a child per request until the engine closes its end: a zygote (fds: the
    sandbox's init pidfd and the zygote's socket) or, with ``"op": "netns"``, the maker of
    a sandbox's network namespace (fd: its socket; with ``"map"``: of its own user
    namespace too, :mod:`.nsmaker`)."""
    _non_dumpable()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps exited children
    nsconfig.preload()
    nsmaker.keep_large_allocations()
    # Children share this process's pages until they write to them.  A garbage collection
    # writes to every object it visits, so the heap is frozen out of the collector here and
    # children do not collect at all (they make no reference cycles to speak of).
    gc.freeze()
    while True:
        req, fds = receive(sock)
        if req is None:
            return
        if req.get("op") == "netns" and "map" in req and len(fds) == 1:
            _sandbox_namespaces(sock, fds[0], req)
        elif req.get("op") == "netns" and len(fds) == 1:
            _fork(sock, fds[0], [], functools.partial(_network_namespace, req))
        elif "op" not in req and len(fds) == 2:
            init_pidfd, zygote_fd = fds
            _fork(sock, zygote_fd, [init_pidfd], functools.partial(zygote, req, init_pidfd))
        else:
            for fd in fds:
                os.close(fd)


def _network_namespace(req: dict[str, Any], sock: socket.socket) -> int:
    return nsmaker.network_namespace(req, functools.partial(send, sock))


def _sandbox_namespaces(sock: socket.socket, reply: int, req: dict[str, Any]) -> None:
    """A child makes the sandbox's user and network namespaces
    (:func:`nsmaker.sandbox_namespaces`); this process, in the engine's user namespace,
    writes the user namespace's maps once the child has unshared it (moments: the
    requests behind wait meanwhile, at most ``MAP_TIMEOUT``)."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    report = os.dup(reply)
    try:
        pid = _fork(sock, reply, [ready_w, go_r], functools.partial(
            _own_namespaces, req, ready_w, go_r, [ready_r, go_w, report]))
        if pid is None:
            return
        try:
            pidfd: int | None = os.pidfd_open(pid)  # (the kill below must not miss)
        except ProcessLookupError:
            pidfd = None  # it has ended already, and said why
        poller = select.poll()
        poller.register(ready_r, select.POLLIN)
        try:
            if not poller.poll(MAP_TIMEOUT * 1000) or os.read(ready_r, 1) != b"u":
                raise OSError(errno.ETIMEDOUT, "its child did not unshare its namespace")
            nsmaker.write_maps(pid, str(req["map"]))
            os.write(go_w, b"m")
        except OSError as exc:
            if pidfd is not None:
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            with socket.socket(fileno=os.dup(report)) as rsock, contextlib.suppress(OSError):
                send(rsock, {"error": f"making the sandbox's user namespace: {exc}"})
        finally:
            if pidfd is not None:
                os.close(pidfd)
    finally:
        for fd in (ready_r, go_w, report):
            os.close(fd)


def _own_namespaces(req: dict[str, Any], ready: int, go: int, parents: list[int],
                    sock: socket.socket) -> int:
    for fd in parents:  # (the fork server's ends)
        os.close(fd)
    return nsmaker.sandbox_namespaces(req, functools.partial(send, sock), ready, go)


def _fork(sock: socket.socket, reply: int, held: list[int],
          work: Callable[[socket.socket], int]) -> int | None:
    """Run ``work`` on the socket ``reply`` in a child, which exits with its code; this
    process closes its copies of ``reply`` and ``held``.  Returns the child's pid (None
    when it could not fork, which ``reply`` hears)."""
    try:
        pid = os.fork()
    except OSError as exc:
        with socket.socket(fileno=reply) as rsock, contextlib.suppress(OSError):
            send(rsock, {"error": f"cannot fork: {exc}"})
        for fd in held:
            os.close(fd)
        return None
    if pid == 0:
        code = 1
        try:
            gc.disable()
            sock.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            code = work(socket.socket(fileno=reply))
        finally:
            os._exit(code)
    for fd in (reply, *held):
        os.close(fd)
    return pid


# a zygote ---------------------------------------------------------------------------------
class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _non_dumpable() -> None:
    """Nothing but a holder of CAP_SYS_PTRACE in the engine's user namespace may trace this
    process or read or write its memory; forks (zygotes, and the commands they start, until
    their ``execve``) inherit it with the memory itself.

    Why: ``posix_spawn`` is a vfork, so a command being started runs in the zygote's memory
    while it is already a process of the sandbox.  Dumpable, it could be opened by
    ``/proc/PID/mem``, ``process_vm_writev`` or ``ptrace`` from the sandbox (same uid,
    same capabilities), and code written there runs in the zygote, outside the sandbox's
    pid namespace (tests/security/test_engine_processes.py)."""
    _check(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "making the process non-dumpable")


def _join(req: dict[str, Any], init_pidfd: int) -> None:
    """Enter the sandbox: its cgroup first (its files are out of sight once inside)."""
    for procs in req.get("cgroup_procs", []):
        try:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        except OSError as exc:
            raise SetupError(f"joining the cgroup {procs}: {exc.strerror}") from exc
    _check(_libc.setns(init_pidfd, JOIN), "joining the sandbox's namespaces")
    if req.get("userns"):
        # root of the sandbox: its slice's first id, which owns nothing outside it
        _check(_libc.setns(init_pidfd, CLONE_NEWUSER), "joining the sandbox's user namespace")
        os.setgroups([])
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    os.close(init_pidfd)
    os.chdir("/")


def _last_cap() -> int:
    """The kernel's highest capability number, read from the engine's ``/proc`` before the
    zygote joins the sandbox's mount namespace: there, ``/proc/sys`` could be an image
    mounted over it (``sb.mount_image``), and a ``0`` read there left every capability in
    the commands' bounding set (tests/security/test_issue19_red_team.py)."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def _restrict(req: dict[str, Any], last: int) -> None:
    """Drop to the sandbox's capabilities (``last``: :func:`_last_cap`), then
    ``no_new_privs`` and its seccomp filter."""
    try:
        os.setgroups([])
    except PermissionError:
        pass  # a single-id map denies setgroups; the engine has no other groups there
    mask = int(req["caps"])
    for cap in range(last + 1):
        if not mask >> cap & 1:
            _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"dropping capability {cap}")
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)(_CapData(mask & 0xFFFFFFFF, mask & 0xFFFFFFFF, 0),
                          _CapData(mask >> 32, mask >> 32, 0))
    _check(_libc.capset(ctypes.byref(header), data), "setting capabilities")
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "ambient caps")
    os.umask(0o022)
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "setting no_new_privs")
    bpf = base64.b64decode(req["seccomp"])
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(len(bpf) // 8, ctypes.cast(buf, ctypes.c_void_p))
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0),
           "loading the seccomp filter")
    _non_dumpable()  # again: a change of credentials may have reset it


def zygote(req: dict[str, Any], init_pidfd: int, sock: socket.socket) -> int:
    try:
        last = _last_cap()
        _join(req, init_pidfd)
        _restrict(req, last)
    except (SetupError, OSError, KeyError, ValueError) as exc:
        send(sock, {"error": str(exc)})
        return 1
    send(sock, {"ready": os.getpid()})
    Zygote(sock).run()
    return 0


class Zygote:
    """Spawns commands on request and reports their ends, until the engine hangs up."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.selector = selectors.DefaultSelector()
        self.selector.register(sock, selectors.EVENT_READ, None)
        self.running: dict[str, tuple[int, int]] = {}  # id -> (pid, pidfd)
        self.root_home = userids.RootHome()

    def run(self) -> None:
        while True:
            for key, _ in self.selector.select():
                if key.data is None:
                    req, fds = receive(self.sock)
                    if req is None:
                        return
                    self.handle(req, fds)
                else:
                    self.reap(key.data)

    def handle(self, req: dict[str, Any], fds: list[int]) -> None:
        if req.get("op") == "kill":
            entry = self.running.get(req["id"])
            if entry is not None:
                try:
                    signal.pidfd_send_signal(entry[1], int(req["signal"]))
                except ProcessLookupError:
                    pass
            return
        try:
            if req.get("op") == "pty":
                self.open_pty(req)
            elif len(fds) == 3:
                self.spawn(req, fds)
        finally:
            for fd in fds:
                os.close(fd)

    def open_pty(self, req: dict[str, Any]) -> None:
        """A terminal of the sandbox's for the exec ``req["id"]``: both ends go to the engine,
        which hands the peer back with the command's spawn request."""
        rows, cols = int(req["rows"]), int(req["cols"])
        try:
            master, peer = terminals.open_pty(rows, cols)
        except OSError as exc:
            send(self.sock, {"id": req["id"], "pty_error": f"opening a terminal: {exc}"})
            return
        try:
            send(self.sock, {"id": req["id"], "pty": True}, [master, peer])
        finally:
            os.close(master)
            os.close(peer)

    def spawn(self, req: dict[str, Any], fds: list[int]) -> None:
        exec_id, argv, env, cwd = req["id"], req["argv"], req["env"], req["cwd"]
        user, terminal = req.get("user"), bool(req.get("terminal"))
        ids: terminals.Ids | None = None
        if user is not None:
            try:
                who = userids.resolve(user)
            except (LookupError, ValueError) as exc:
                return self.refuse(exec_id, fds[2], str(exc), None)
            reason = userids.unmapped(who)
            if reason is not None:
                return self.refuse(exec_id, fds[2], reason, None)
            ids = terminals.Ids(who.uid, who.gid, who.groups)
            env.setdefault("HOME", who.home)
        if "HOME" not in env:
            env["HOME"] = self.root_home.get()  # as runc and crun do
        try:
            os.chdir(cwd)
        except OSError as exc:
            return self.refuse(exec_id, fds[2], f"chdir `{cwd}`: {exc.strerror}", exc.errno)
        try:
            path = resolve(argv[0], env.get("PATH", DEFAULT_PATH))
        except OSError as exc:
            os.chdir("/")
            return self.refuse(exec_id, fds[2], exc.strerror or str(exc), exc.errno)
        try:
            if terminal or ids is not None:
                pid = terminals.fork_exec(path, argv, env, cwd, fds, terminal=terminal,
                                          ids=ids, default_signals=RESET_SIGNALS)
            else:
                pid = os.posix_spawn(path, argv, env, setsigdef=RESET_SIGNALS, setsigmask=(),
                                     file_actions=[(os.POSIX_SPAWN_DUP2, fd, i)
                                                   for i, fd in enumerate(fds)])
        except OSError as exc:
            detail = exc.strerror if terminal or ids is not None else \
                f"exec `{path}`: {exc.strerror}"
            return self.refuse(exec_id, fds[2], detail or str(exc), exc.errno)
        finally:
            os.chdir("/")
        pidfd = os.pidfd_open(pid)
        self.running[exec_id] = (pid, pidfd)
        self.selector.register(pidfd, selectors.EVENT_READ, exec_id)
        send(self.sock, {"id": exec_id, "pid": pid}, [pidfd])

    def refuse(self, exec_id: str, stderr: int, message: str, err: int | None) -> None:
        try:
            os.write(stderr, message.encode(errors="replace") + b"\n")
        except OSError:
            pass
        code = 127 if err in (errno.ENOENT, errno.ENOTDIR) else 126
        send(self.sock, {"id": exec_id, "exit": code})

    def reap(self, exec_id: str) -> None:
        pid, pidfd = self.running.pop(exec_id)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        send(self.sock, {"id": exec_id, "exit": os.waitstatus_to_exitcode(status)})


def resolve(name: str, path: str) -> str:
    """Where ``name`` runs from, looked up in the command's own ``PATH`` as execvp does."""
    if not name:
        raise OSError(errno.ENOENT, "executable file `` not found: No such file or directory")
    if "/" in name:
        try:
            st = os.stat(name)
        except OSError as exc:
            raise OSError(exc.errno, f"exec `{name}`: {exc.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            raise OSError(errno.EACCES, f"exec `{name}`: Is a directory")
        return name
    denied = None
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", name)
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(candidate, os.X_OK):
            return candidate
        denied = candidate
    if denied is not None:
        raise OSError(errno.EACCES, f"exec `{denied}`: Permission denied")
    raise OSError(errno.ENOENT,
                  f"executable file `{name}` not found in $PATH: No such file or directory")


def lower_descriptor_limit(soft: int) -> None:
    """Start with the soft limit of open files a sandbox's processes have (the daemon raised
    its own), so a command a zygote starts has what the sandbox's init got."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    wanted = soft if hard == resource.RLIM_INFINITY else min(soft, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


if __name__ == "__main__":  # forkserver.py FD SANDBOX_NOFILE
    _fd = int(sys.argv[1])
    os.set_inheritable(_fd, False)  # it came as a plain fd 3; commands must not get it
    lower_descriptor_limit(int(sys.argv[2]))
    serve(socket.socket(fileno=_fd))
