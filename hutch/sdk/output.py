"""What the SDK prints: ``enable_output()`` progress and ``verbose=True`` lines.

Nothing is printed unless asked.  Inside ``with hutch.enable_output():`` image builds show a
``rich`` status line with the step being built and stream the build's log beneath it, as
Modal's ``enable_output`` does.  A sandbox created with ``verbose=True`` logs one line per
exec (and per file operation) through the ``hutch.sandbox`` logger, printed to stderr when
no logging is configured; secrets' values never appear in either, only their names.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import sys
import threading
from collections.abc import Iterator

from rich.console import Console
from rich.status import Status
from rich.text import Text

from hutch.sdk.termsafe import TerminalFilter

_lock = threading.Lock()
_depth = 0
_show_progress = True

verbose_log = logging.getLogger("hutch.sandbox")


@contextlib.contextmanager
def enable_output(show_progress: bool = True) -> Iterator[None]:
    """Show image build logs and progress while the block runs (nests; thread-wide)."""
    global _depth, _show_progress
    with _lock:
        _depth += 1
        previous, _show_progress = _show_progress, show_progress
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            _show_progress = previous


def output_enabled() -> bool:
    return _depth > 0


class BuildDisplay:
    """A build's progress on the terminal (stderr), or nothing when output is off."""

    def __init__(self, what: str) -> None:
        self.enabled = output_enabled()
        self._what = what
        self._console = Console(stderr=True, highlight=False) if self.enabled else None
        self._status: Status | None = None

    def __enter__(self) -> BuildDisplay:
        if self._console is not None and _show_progress:
            self._status = self._console.status(f"Building image {self._what}...")
            self._status.start()
        return self

    def step(self, event: dict[str, object]) -> None:
        """A step starts: ``=> [2/5] pip_install six`` (``CACHED`` when it will not run)."""
        if self._console is not None:
            text = Text(f"=> [{event.get('step')}/{event.get('of')}] ", style="bold")
            if event.get("cached"):
                text.append("CACHED ", style="green")
            text.append(str(event.get("description")))
            self._console.print(text, soft_wrap=True)
            if self._status is not None:
                self._status.update(f"Building image {self._what}: step {event.get('step')}/"
                                    f"{event.get('of')}")

    def line(self, text: str) -> None:
        """A line of the build's output: what the build's commands printed (a package's
        install script among them), so its control sequences are shown, not obeyed."""
        if self._console is not None:
            shield = TerminalFilter()
            safe = (shield.feed(text.encode(errors="surrogateescape")) + shield.flush())
            self._console.print(safe.decode(errors="replace"), style="dim", markup=False,
                                soft_wrap=True)

    def done(self, ref: str) -> None:
        if self._console is not None:
            self._console.print(f"[green]✓[/green] Built image {self._what} -> {ref}",
                                soft_wrap=True)

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.stop()


def _ensure_handler() -> None:
    """Print verbose lines to stderr if the program configured no logging of its own."""
    if not logging.getLogger().handlers and not verbose_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        verbose_log.addHandler(handler)
        verbose_log.setLevel(logging.INFO)
        verbose_log.propagate = False


def log_exec(sandbox_id: str, argv: list[str], workdir: str | None,
             secret_keys: list[str]) -> None:
    """The verbose line of one exec: the command as a shell would show it, never values."""
    _ensure_handler()
    where = f" in {workdir}" if workdir else ""
    secrets = f" with secrets {', '.join(secret_keys)}" if secret_keys else ""
    verbose_log.info("[%s] exec%s%s: %s", sandbox_id, where, secrets, shlex.join(argv))


def log_file_operation(sandbox_id: str, operation: str, path: str) -> None:
    """The verbose line of one file operation in a sandbox."""
    _ensure_handler()
    verbose_log.info("[%s] %s %s", sandbox_id, operation, path)
