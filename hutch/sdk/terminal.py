"""The local end of a pseudo-terminal: what ``exec(pty=True)`` asks the engine for, and what
``ContainerProcess.attach`` does with the terminal it runs in (raw mode, resizes).

Why a terminal in the sandbox (not here): programs check ``isatty()`` and draw for the
size they read from their own terminal (vim, top, a REPL's line editor); Ctrl-C and Ctrl-Z
are characters the sandbox's terminal turns into signals for its foreground job.  The
engine keeps the master end; this side sends keystrokes as they are typed (raw mode: no
local echo, no line editing, ^C as a byte) and the local window's size when it changes.

A change of size reaches the sandbox at once where the program called
:func:`watch_resizes` on its main thread (``hutch shell`` does: SIGWINCH), and otherwise
within ``SIZE_POLL`` seconds (a signal handler may only be set from the main thread, and
``attach`` runs on hutch's event-loop thread).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import termios
import threading
import tty
from collections.abc import Iterator
from typing import Any

from hutch.api.models import DEFAULT_TERM, DEFAULT_TERMINAL_SIZE, MAX_TERMINAL_CELLS

#: Seconds between looks at the local window's size where no SIGWINCH handler is set.
SIZE_POLL = 0.25

_winch: tuple[int, int] | None = None


def local_size(fd: int | None = None) -> tuple[int, int] | None:
    """Rows and columns of the terminal on ``fd`` (stdin by default); None if it is none."""
    try:
        size = os.get_terminal_size(sys.stdin.fileno() if fd is None else fd)
    except (OSError, ValueError, AttributeError):
        return None
    return (size.lines, size.columns) if size.lines and size.columns else None


def pty_request(pty: bool, pty_info: Any = None) -> dict[str, Any] | None:
    """The ``pty`` of an exec request: the size and ``TERM`` of this terminal (``pty``), or
    of Modal's ``PTYInfo`` (``winsz_rows``, ``winsz_cols``, ``env_term``); None for neither."""
    if not pty and pty_info is None:
        return None
    rows, cols = local_size() or DEFAULT_TERMINAL_SIZE
    term = os.environ.get("TERM") or DEFAULT_TERM
    if not pty and pty_info is not None:
        def field(name: str) -> Any:
            return pty_info.get(name) if isinstance(pty_info, dict) else \
                getattr(pty_info, name, None)

        rows = int(field("winsz_rows") or rows)
        cols = int(field("winsz_cols") or cols)
        term = str(field("env_term") or term)
    if term == "dumb" or not term.replace("-", "").replace(".", "").replace("+", "").isalnum():
        term = DEFAULT_TERM
    return {"rows": max(1, min(rows, MAX_TERMINAL_CELLS)),
            "cols": max(1, min(cols, MAX_TERMINAL_CELLS)), "term": term}


@contextlib.contextmanager
def raw_mode(fd: int = 0) -> Iterator[bool]:
    """Put the terminal on ``fd`` in raw mode for the block (yields whether it is one);
    its settings come back however the block ends."""
    try:
        saved = termios.tcgetattr(fd)
    except (termios.error, OSError):
        yield False
        return
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def watch_resizes() -> bool:
    """Have SIGWINCH wake :func:`wait_resize` at once (call it on the main thread; a no-op
    elsewhere, which then polls).  Returns whether the handler is set."""
    global _winch
    if threading.current_thread() is not threading.main_thread():
        return False
    if _winch is None:
        r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        _winch = (r, w)
        signal.signal(signal.SIGWINCH, lambda *_: _poke(w))
    return True


def _poke(fd: int) -> None:
    with contextlib.suppress(OSError):  # (full: a wake-up is pending anyway)
        os.write(fd, b"w")


def wait_resize(quit_fd: int) -> bool:
    """Block until the window may have changed size (False: ``quit_fd`` became readable)."""
    watched = [quit_fd] + ([_winch[0]] if _winch is not None else [])
    ready, _, _ = select.select(watched, [], [], None if _winch is not None else SIZE_POLL)
    if quit_fd in ready:
        return False
    if _winch is not None and _winch[0] in ready:
        with contextlib.suppress(OSError):
            os.read(_winch[0], 4096)
    return True
