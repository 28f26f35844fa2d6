"""Starting the engine on first use, the way a client finds it not running.

Under a lock file (so concurrent clients start one engine), it asks a surviving pause
process for a new daemon (SIGUSR1) or starts a new pause process, detached in its own
session, then waits for the socket to answer with a deadline.  It never imports the engine:
it runs ``python -m hutch.engine.pause`` like any other program.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from hutch.api import paths
from hutch.exception import ConnectionError as EngineStartError

START_TIMEOUT = 60.0


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: the pause process may be our own child)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat.rsplit(b")", 1)[1].split()[0] != b"Z"


def _pause_pid(runtime: Path) -> int | None:
    try:
        pid = int((runtime / paths.PAUSE_PID).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"hutch.engine.pause" in cmdline and _running(pid) else None


@contextlib.contextmanager
def _launch_lock(runtime: Path) -> Iterator[None]:
    runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(runtime / "launch.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _log_tail(runtime: Path, lines: int = 20) -> str:
    try:
        text = (runtime / paths.ENGINE_LOG).read_text(errors="replace")
    except OSError:
        return "(no engine log)"
    return "\n".join(text.strip().splitlines()[-lines:])


def _daemon_pid(runtime: Path) -> int | None:
    """The daemon the pause process runs (``daemon.pid``), if any."""
    try:
        return int((runtime / paths.DAEMON_PID).read_text())
    except (OSError, ValueError):
        return None


def _ended_daemon(runtime: Path) -> int | None:
    """The pid of the last daemon that ended (``daemon.exit``: "pid code"), if any."""
    try:
        return int((runtime / paths.DAEMON_EXIT).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def ensure_engine(is_ready: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
    """Start the engine unless ``is_ready()`` says it answers; wait until it does."""
    if is_ready():
        return
    runtime, data = paths.runtime_dir(), paths.data_dir()
    with _launch_lock(runtime):
        if is_ready():
            return
        pid = _pause_pid(runtime)
        child: subprocess.Popen[bytes] | None = None
        # The daemon there now (if any) may have died unreaped; only the exit of another,
        # the one started for this request, is a failure.
        before = _daemon_pid(runtime)
        (runtime / paths.DAEMON_EXIT).unlink(missing_ok=True)  # a record older than this request
        if pid is not None:
            os.kill(pid, signal.SIGUSR1)
        else:
            child = _spawn_pause(runtime, data)
            pid = child.pid
        deadline = time.monotonic() + timeout
        delay = 0.005
        while time.monotonic() < deadline:
            if is_ready():
                return
            ended = child.poll() is not None if child else not _running(pid)
            if ended or _ended_daemon(runtime) not in (None, before):
                raise EngineStartError(f"the hutch engine failed to start:\n{_log_tail(runtime)}")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
        raise EngineStartError(
            f"the hutch engine did not answer within {timeout:.0f} s:\n{_log_tail(runtime)}"
        )


def _spawn_pause(runtime: Path, data: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, HUTCH_RUNTIME_DIR=str(runtime), HUTCH_DATA_DIR=str(data))
    (runtime / "exits").mkdir(parents=True, exist_ok=True)
    log = open(runtime / paths.ENGINE_LOG, "a")  # noqa: SIM115 - handed to the child
    with log:
        return subprocess.Popen(
            [sys.executable, "-m", "hutch.engine.pause"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
            start_new_session=True, close_fds=True,
        )


def stop_engine(timeout: float = 30.0) -> bool:
    """Stop a pause process whose daemon no longer answers; True if one was running."""
    runtime = paths.runtime_dir()
    pid = _pause_pid(runtime)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.02)
    return True
