"""The engine's namespace holder, reaper and daemon supervisor (``python -m hutch.engine.pause``).

Like podman's pause process, this small long-lived process owns the user namespace (for a
non-root user) and the mount namespace in which the engine mounts overlay root
filesystems.  Unlike podman's it also

* is the *child subreaper* for every sandbox: when ``crun create`` exits, the
  sandbox's init process is re-parented here, so its exit status is collected even while
  the daemon is down, and written to ``<runtime>/exits/<pid>`` for the daemon to read;
* starts the trio daemon as its own child (on start and on ``SIGUSR1``), so the daemon is
  born inside the namespaces instead of joining them with setns(2), which a multi-threaded
  Python process cannot do for a user namespace.

A daemon killed with SIGKILL therefore loses nothing: the namespaces, the mounts and the
sandboxes stay here, and the next daemon finds them.  ``SIGTERM`` stops the daemon and
then this process.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path

from hutch.api import paths
from hutch.engine.kernel import linux, userns

log = logging.getLogger("hutch.pause")

#: Files in the runtime dir for the launcher: the running daemon's pid, and "pid code" of
#: the last daemon that ended (a launcher that asked for a new daemon tells its own by pid).
DAEMON_PID, DAEMON_EXIT = paths.DAEMON_PID, paths.DAEMON_EXIT

_HANDLED = {signal.SIGCHLD, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT}


def _enter_namespaces(runtime: Path) -> dict[str, object]:
    """Unshare user (if unprivileged) and mount namespaces; return a description."""
    user = _user_name()
    if os.geteuid() == 0:
        linux.unshare(linux.CLONE_NEWNS)
        mode = "root"
    else:
        plan = userns.plan_for_current_user()
        mode = "subuid" if plan.full else "single"
        if plan.full:
            ready_r, ready_w = os.pipe()
            done_r, done_w = os.pipe()
            parent = os.getpid()
            child = os.fork()
            if child == 0:  # stays in the parent namespace to run newuidmap for us
                os.close(ready_w)
                os.close(done_r)
                os.read(ready_r, 1)
                try:
                    userns.apply_full_map(parent, plan)
                    os.write(done_w, b"ok")
                except Exception as exc:
                    os.write(done_w, f"error: {exc}".encode()[:500])
                os._exit(0)
            os.close(ready_r)
            os.close(done_w)
            linux.unshare(linux.CLONE_NEWUSER | linux.CLONE_NEWNS)
            os.write(ready_w, b"x")
            result = os.read(done_r, 600).decode()
            os.waitpid(child, 0)
            if result != "ok":
                raise RuntimeError(f"mapping the subordinate ids failed: {result}")
        else:
            log.warning(
                "no /etc/subuid and /etc/subgid range for uid %d (or newuidmap missing): "
                "mapping a single uid; images with files of other owners will not work. "
                "Fix: usermod --add-subuids 100000-165535 --add-subgids 100000-165535 <user>",
                plan.uid,
            )
            linux.unshare(linux.CLONE_NEWUSER | linux.CLONE_NEWNS)
            userns.apply_single_map(plan)
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        if mode == "subuid":
            os.setgroups([])
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    uid_map = Path("/proc/self/uid_map").read_text().split()
    return {"mode": mode, "uid_map": uid_map, "pid": os.getpid(), "user": user}


def _user_name() -> str:
    """The host user the engine runs for (its cgroups are delegated by this name)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


class Pause:
    def __init__(self, runtime: Path, log_path: Path) -> None:
        self.runtime = runtime
        self.exits = runtime / "exits"
        self.log_path = log_path
        self.daemon_pid: int | None = None
        self.stopping = False
        #: a launcher asked for a daemon (SIGUSR1) and none has been started since
        self.wanted = False

    def spawn_daemon(self) -> None:
        if self.daemon_pid is not None:
            return
        self.wanted = False
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            self.daemon_pid = os.posix_spawn(
                sys.executable,
                [sys.executable, "-m", "hutch.engine.serve"],
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, null, 0),
                    (os.POSIX_SPAWN_DUP2, fd, 1),
                    (os.POSIX_SPAWN_DUP2, fd, 2),
                ],
                setsigmask=set(),
            )
        finally:
            os.close(fd)
            os.close(null)
        (self.runtime / DAEMON_PID).write_text(str(self.daemon_pid))
        log.info("started engine daemon pid %d", self.daemon_pid)

    def record_exit(self, pid: int, status: int) -> None:
        if pid == self.daemon_pid:
            log.info("engine daemon pid %d ended with %d", pid, _exit_code(status))
            self.daemon_pid = None
            # this order: a launcher that finds no daemon.pid finds the record to discard
            (self.runtime / DAEMON_EXIT).write_text(f"{pid} {_exit_code(status)}")
            (self.runtime / DAEMON_PID).unlink(missing_ok=True)
            if self.wanted and not self.stopping:  # asked for while this one was dying
                self.spawn_daemon()
            return
        tmp = self.exits / f".{pid}.tmp"
        tmp.write_text(json.dumps({"pid": pid, "code": _exit_code(status), "at": time.time()}))
        tmp.rename(self.exits / str(pid))

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.record_exit(pid, status)

    def run(self) -> int:
        self.spawn_daemon()
        while True:
            signum = signal.sigwait(_HANDLED)
            if signum == signal.SIGCHLD:
                self.reap()
                if self.stopping and self.daemon_pid is None:
                    return 0
            elif signum == signal.SIGUSR1 and not self.stopping:
                # The daemon may be dying (killed moments ago, not reaped yet): then the
                # new one starts as soon as it is reaped.
                self.wanted = True
                self.reap()
                self.spawn_daemon()
            elif signum in (signal.SIGTERM, signal.SIGINT):
                self.stopping = True
                if self.daemon_pid is None:
                    return 0
                os.kill(self.daemon_pid, signal.SIGTERM)


def _remove_roots_view(runtime: Path, *, mounted: bool) -> None:
    """Remove the directory in /tmp where the daemon bound the sandboxes' directories for
    their roots (:mod:`hutch.engine.lifecycle.sandboxids`; a tmpfs in this mount namespace, an empty
    directory on the host)."""
    record = runtime / paths.ROOTS
    try:
        path = Path(record.read_text().strip())
    except OSError:
        return
    if not path.name.startswith("hutch-roots-") or path.parent != Path("/tmp"):
        return
    try:
        if mounted and os.path.ismount(path):
            linux.umount(str(path), linux.MNT_DETACH)
        path.rmdir()
    except OSError as exc:
        log.warning("removing %s: %s", path, exc)
    record.unlink(missing_ok=True)


def _end_lost_sandboxes() -> None:
    """End what is left of the sandboxes of a previous pause process (killed), from the
    host's namespace, where their processes can still be signalled even when they run
    under ids of their own (:func:`hutch.engine.storage.remains.end_all_lost`).  A program of its
    own, so that this long-lived process does not load trio."""
    data = os.environ.get("HUTCH_DATA_DIR")
    if not data or not any((Path(data) / "sandboxes").glob("*/processes")):
        return
    try:
        subprocess.run([sys.executable, "-m", "hutch.engine.storage.remains",
                        str(Path(data) / "sandboxes")], timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("ending the sandboxes of the previous engine: %s", exc)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s pause %(levelname)s %(message)s")
    runtime = Path(os.environ["HUTCH_RUNTIME_DIR"])
    signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
    (runtime / "exits").mkdir(parents=True, exist_ok=True)
    _end_lost_sandboxes()
    _remove_roots_view(runtime, mounted=False)  # a killed predecessor's, empty out here
    info = _enter_namespaces(runtime)
    linux.set_child_subreaper()
    os.umask(0o077)
    (runtime / "userns.json").write_text(json.dumps(info))
    (runtime / paths.PAUSE_PID).write_text(str(os.getpid()))
    log.info("namespaces ready: %s", info)
    code = Pause(runtime, runtime / paths.ENGINE_LOG).run()
    _remove_roots_view(runtime, mounted=True)
    (runtime / paths.PAUSE_PID).unlink(missing_ok=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
