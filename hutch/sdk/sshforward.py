"""``HUTCH_ENGINE=ssh://[USER@]HOST[:PORT][/path/engine.sock]``: the remote engine's Unix
socket forwarded to a local one by the ``ssh`` command, as podman's remote mode reaches
``podman.sock``: nothing listens on the network but sshd, and ssh's keys, agent,
``known_hosts`` and ``~/.ssh/config`` are the user's own.

One ``ssh -N -L LOCAL:REMOTE`` per process and URL, started on first use and again when
it ended (a dropped network), stopped when the program exits (in its process group, a
terminal's Ctrl-C reaches it too; a program killed with SIGKILL leaves it until its
connection ends); the local socket sits in a directory only this user can enter (ssh
binds it 0600 too).  Without a path in the URL the remote socket is asked for
first: ``ssh HOST hutch engine socket`` starts the remote user's engine if it is not
running and prints its socket (``HUTCH_SSH_HUTCH`` names the remote command when ``hutch``
is not on the remote ``PATH``, e.g. ``/opt/hutch/bin/hutch``).  ``BatchMode``: ssh never
prompts (a program has no one to answer); ``HUTCH_SSH_OPTIONS`` adds options
(``-i KEY -o UserKnownHostsFile=...``), as a context's ``ssh_options`` do.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from hutch.exception import ConnectionError, InvalidError, NotFoundError

#: Seconds ssh has to log in and set up the forward.
CONNECT_TIMEOUT = 30.0

_lock = threading.Lock()
#: This process's forwards (a forked child starts with none: its parent's go on serving it
#: while they run, and are its parent's to stop).
_forwards: dict[str, subprocess.Popen[bytes]] = {}
_folder: Path | None = None
_owner = 0


def _private_folder() -> Path:
    global _folder, _owner
    if _folder is None:
        _folder = Path(tempfile.mkdtemp(prefix="hutch-ssh-"))  # mode 0700
        _owner = os.getpid()
        atexit.register(_stop_all)
    return _folder


def _forget_after_fork() -> None:
    global _lock
    _lock = threading.Lock()
    _forwards.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def local_socket(url: str) -> str:
    """Where the forward of ``url`` listens, in this process."""
    _parse(url)
    name = hashlib.sha256(url.encode()).hexdigest()[:16]
    return str(_private_folder() / f"{name}.sock")


def _parse(url: str) -> tuple[str, list[str], str]:
    """The ssh destination, its port options and the remote socket path (may be empty)."""
    parts = urlsplit(url)
    if parts.scheme != "ssh" or not parts.hostname:
        raise InvalidError(f"{url!r} is not ssh://[USER@]HOST[:PORT][/path/engine.sock]")
    if parts.query or parts.fragment or parts.password:
        raise InvalidError(f"{url!r}: an ssh:// engine URL has no password, query or "
                           "fragment (ssh's keys and agent log in)")
    host = parts.hostname
    destination = f"{unquote(parts.username)}@{host}" if parts.username else host
    if destination.startswith("-"):
        raise InvalidError(f"{url!r}: a host name cannot begin with '-'")
    try:
        port = ["-p", str(parts.port)] if parts.port else []
    except ValueError:
        raise InvalidError(f"{url!r}: the port is a number from 1 to 65535") from None
    return destination, port, unquote(parts.path) if parts.path not in ("", "/") else ""


def _ssh_base(url: str, extra: list[str]) -> tuple[list[str], str, str]:
    ssh = shutil.which("ssh")
    if ssh is None:
        raise NotFoundError("an ssh:// engine needs the ssh command (apt-get install "
                            "openssh-client)")
    destination, port, remote = _parse(url)
    options = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
               "-o", "ServerAliveInterval=15", *port,
               *shlex.split(os.environ.get("HUTCH_SSH_OPTIONS", "")), *extra]
    return [ssh, *options], destination, remote


def _remote_socket(base: list[str], destination: str) -> str:
    command = os.environ.get("HUTCH_SSH_HUTCH", "hutch")
    argv = [*base, "--", destination, f"{command} engine socket"]
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=300)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines or not lines[-1].startswith("/"):
        hint = " (hutch is not on the remote PATH: HUTCH_SSH_HUTCH names its command " \
            "there)" if result.returncode == 127 else ""
        raise ConnectionError(
            f"`{shlex.join(argv[1:])}` failed (exit {result.returncode}): "
            f"{result.stderr.strip()[-800:] or result.stdout[-300:]}{hint}")
    return lines[-1]


def ensure(url: str, local: str, extra: list[str] | None = None) -> None:
    """Start the forward of ``url`` to ``local`` unless it runs; blocking."""
    with _lock:
        running = _forwards.get(url)
        if running is not None and running.poll() is None and _answers(local):
            return
        if running is not None:
            _stop(running)
        base, destination, remote = _ssh_base(url, extra or [])
        remote = remote or _remote_socket(base, destination)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(local)
        log = Path(local).with_suffix(".log")
        with open(log, "wb") as errors:  # (a file: ssh's messages never fill a pipe)
            process = subprocess.Popen(
                [*base, "-N", "-o", "ExitOnForwardFailure=yes",
                 "-o", "StreamLocalBindMask=0177", "-L", f"{local}:{remote}", "--",
                 destination],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors)
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while not os.path.exists(local):
            if process.poll() is not None or time.monotonic() > deadline:
                _stop(process)
                why = log.read_text(errors="replace").strip()
                raise ConnectionError(f"ssh could not forward the engine's socket of "
                                      f"{url}: {why[-800:] or 'no answer in time'}")
            time.sleep(0.02)
        _forwards[url] = process


def said(url: str) -> str:
    """The last thing the forward's ssh said (why a connection through it failed: the
    remote socket refused, or sshd does not allow forwarding), or ``""``."""
    try:
        log = Path(local_socket(url)).with_suffix(".log").read_text(errors="replace")
    except OSError:
        return ""
    lines = [line for line in log.strip().splitlines() if not line.startswith("Warning:")]
    return lines[-1] if lines else ""


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _stop_all() -> None:
    with _lock:
        for process in _forwards.values():
            _stop(process)
        _forwards.clear()
    if _folder is not None and os.getpid() == _owner:
        shutil.rmtree(_folder, ignore_errors=True)
