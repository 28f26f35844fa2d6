"""Where a hutch engine keeps its socket and its state.

The location is part of the wire contract: the SDK finds the engine through it, the engine
serves on it.  Everything lives under the XDG directories of the user who runs the engine
(``/run/hutch`` and ``/var/lib/hutch`` for root), never inside the source tree.
``HUTCH_RUNTIME_DIR`` and ``HUTCH_DATA_DIR`` override both, which is how tests run isolated
engines side by side.
"""

from __future__ import annotations

import os
from pathlib import Path

#: What the runtime directory holds, named once for the engine and the SDK (which starts the
#: engine and reads why it did not start):
#: the engine's socket
SOCKET = "engine.sock"
#: the pause process's pid (it holds the engine's namespaces) and the daemon's
PAUSE_PID, DAEMON_PID = "pause.pid", "daemon.pid"
#: ``<pid> <exit code>`` of the daemon's last end, and the engine's log
DAEMON_EXIT, ENGINE_LOG = "daemon.exit", "engine.log"
#: the path of the tmpfs where sandboxes' roots are shown to their own ids
ROOTS = "roots"


def _home() -> Path:
    return Path(os.environ.get("HOME") or os.path.expanduser("~"))


def runtime_dir() -> Path:
    """The directory of the engine socket, pid files and other volatile state."""
    override = os.environ.get("HUTCH_RUNTIME_DIR")
    if override:
        return Path(override)
    if os.geteuid() == 0:
        return Path("/run/hutch")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK):
        return Path(xdg) / "hutch"
    return _home() / ".local" / "state" / "hutch"


def data_dir() -> Path:
    """The directory of images, layers, sandboxes and the state database."""
    override = os.environ.get("HUTCH_DATA_DIR")
    if override:
        return Path(override)
    if os.geteuid() == 0:
        return Path("/var/lib/hutch")
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else _home() / ".local" / "share"
    return base / "hutch"


def socket_path() -> Path:
    """The engine's Unix socket (mode 0600)."""
    return runtime_dir() / SOCKET
