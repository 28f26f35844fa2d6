"""``hutch.Probe``: when a sandbox counts as ready (``Sandbox.create(readiness_probe=...)``).

Either a TCP port inside the sandbox that accepts connections (checked from inside, with
bash's ``/dev/tcp`` or Python, so the image needs one of them) or a command that exits 0,
run every ``interval_ms`` by the engine until it passes; ``sb.wait_until_ready()`` waits
for that.  Messages follow Modal's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hutch.exception import InvalidError
from hutch.sdk.options import check_text, shown

#: The engine's longest interval between two probes (``ProbeSpec``): an hour.
MAX_INTERVAL_MS = 3_600_000


def _interval(value: object, who: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidError(f"{who} expects an integer `interval_ms`")
    if value <= 0:
        raise InvalidError(f"{who} expects `interval_ms` > 0, got {shown(value)}")
    if value > MAX_INTERVAL_MS:
        raise InvalidError(f"{who} expects `interval_ms` <= {MAX_INTERVAL_MS} (an hour), "
                           f"got {shown(value)}")
    return value


@dataclass(frozen=True)
class Probe:
    """A readiness probe; make one with :meth:`with_tcp` or :meth:`with_exec`."""

    tcp_port: int | None = None
    exec_argv: tuple[str, ...] | None = None
    interval_ms: int = 100

    def __post_init__(self) -> None:
        if (self.tcp_port is None) == (self.exec_argv is None):
            raise InvalidError(
                "Probe must be created with Probe.with_tcp(...) or Probe.with_exec(...)")

    @staticmethod
    def with_tcp(port: int, *, interval_ms: int = 100) -> Probe:
        if not isinstance(port, int) or isinstance(port, bool):
            raise InvalidError("Probe.with_tcp() expects an integer `port`")
        if not 1 <= port <= 65535:
            raise InvalidError(
                f"Probe.with_tcp() expects `port` in [1, 65535], got {shown(port)}")
        return Probe(tcp_port=port, interval_ms=_interval(interval_ms, "Probe.with_tcp()"))

    @staticmethod
    def with_exec(*argv: str, interval_ms: int = 100) -> Probe:
        if not argv:
            raise InvalidError("Probe.with_exec() requires at least one argument")
        if not all(isinstance(a, str) for a in argv):
            raise InvalidError("Probe.with_exec() expects all arguments to be strings")
        for arg in argv:  # run by the engine as a command: no NUL bytes, UTF-8
            check_text(arg, f"Probe.with_exec(): the argument {shown(arg)}")
        return Probe(exec_argv=tuple(argv),
                     interval_ms=_interval(interval_ms, "Probe.with_exec()"))

    def spec(self) -> dict[str, Any]:
        """What ``Sandbox.create`` sends."""
        return {"tcp_port": self.tcp_port,
                "exec_argv": list(self.exec_argv) if self.exec_argv else None,
                "interval_ms": self.interval_ms}
