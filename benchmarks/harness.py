"""The timing harness: samples, summary statistics and the interleaved run loop.

Every contender is reduced to a *trial*: a no-argument callable that performs one
measurement and returns a :class:`Sample` (seconds, plus optional named sub-timings such as
"time until the process exited").  :func:`run_interleaved` calls the trials of one scenario
round-robin, rotating the order every round, so slow drift on the machine (page cache, CPU
frequency, a background job) spreads over all contenders instead of biasing the last one.

Before each trial the harness waits until the machine is quiet (:func:`wait_quiet`), so
that no trial pays for work the previous one left running (podman's cleanup after ``run
--rm`` returns, an engine tearing a sandbox down): each measures its contender alone.

A contender that cannot be set up, or whose trial raises, is *unavailable*: the run goes on
without it and the report says why.  Nothing here may crash the whole benchmark.
"""

from __future__ import annotations

import math
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


class Unavailable(Exception):
    """A contender cannot run here (missing tool, failed set-up); the message says why."""


class TrialError(Exception):
    """One measurement failed (wrong output, non-zero exit, timeout)."""


@dataclass(frozen=True)
class Sample:
    """One measurement: the headline ``seconds`` and optional named sub-timings."""

    seconds: float
    extra: dict[str, float] = field(default_factory=dict)


Trial = Callable[[], Sample]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``values`` by linear interpolation (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class Stats:
    """Summary of a list of durations, in seconds."""

    n: int
    median: float
    p10: float
    p90: float
    mean: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        return cls(
            n=len(values),
            median=percentile(values, 0.5),
            p10=percentile(values, 0.1),
            p90=percentile(values, 0.9),
            mean=sum(values) / len(values),
            min=min(values),
            max=max(values),
        )

    def as_dict(self) -> dict[str, float | int]:
        return {"n": self.n, "median": self.median, "p10": self.p10, "p90": self.p90,
                "mean": self.mean, "min": self.min, "max": self.max}


@dataclass
class Outcome:
    """What one contender produced in one scenario."""

    peer: str
    command: str
    available: bool = True
    reason: str | None = None
    notes: list[str] = field(default_factory=list)
    samples: list[float] = field(default_factory=list)
    extras: dict[str, list[float]] = field(default_factory=dict)

    def mark_unavailable(self, reason: str) -> None:
        self.available = False
        self.reason = reason

    def record(self, sample: Sample) -> None:
        self.samples.append(sample.seconds)
        for key, value in sample.extra.items():
            self.extras.setdefault(key, []).append(value)

    def stats(self) -> Stats | None:
        return Stats.of(self.samples) if self.available and self.samples else None

    def as_dict(self) -> dict[str, Any]:
        stats = self.stats()
        return {
            "peer": self.peer,
            "command": self.command,
            "available": self.available and stats is not None,
            "reason": self.reason,
            "notes": self.notes,
            "samples_s": self.samples,
            "stats_s": stats.as_dict() if stats else None,
            "extras_s": {k: {"samples": v, "stats": Stats.of(v).as_dict()}
                         for k, v in self.extras.items() if v},
        }


def describe(exc: BaseException) -> str:
    """A one-line reason for a report: the exception's type and first lines of message."""
    text = " ".join(str(exc).split())
    if len(text) > 400:
        text = text[:400] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


#: ``wait_quiet``: the machine is quiet when its CPUs were busy at most this share of a
#: ``QUIET_WINDOW``-second window; it waits ``QUIET_MAX_WAIT`` seconds at most.
QUIET_SHARE, QUIET_WINDOW, QUIET_MAX_WAIT = 0.10, 0.05, 2.0


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from ``/proc/stat``."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def wait_quiet(share: float = QUIET_SHARE, window: float = QUIET_WINDOW,
               max_wait: float = QUIET_MAX_WAIT) -> bool:
    """Wait until one ``window`` passes with the CPUs busy at most ``share`` of it; False
    if that did not happen within ``max_wait`` seconds (or ``/proc/stat`` is unreadable)."""
    deadline = time.monotonic() + max_wait
    before = _cpu_jiffies()
    while before is not None and time.monotonic() < deadline:
        time.sleep(window)
        after = _cpu_jiffies()
        if after is None:
            return False
        busy, total = after[0] - before[0], after[1] - before[1]
        if total > 0 and busy <= share * total:
            return True
        before = after
    return False


def engine_settled(timeout: float = 10.0) -> bool:
    """Wait (untimed, before a measurement) until the hutch engine has refilled its reserve
    (the sandboxes it starts ahead of time after a create took one) and the CPUs are
    quiet: a measurement taken meanwhile shares the machine with those starts.  False if
    that did not happen within ``timeout`` seconds."""
    from hutch.sdk.transport import request_blocking

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = request_blocking("GET", "/v1/engine")["reserve"]
        if info["ready"] >= info["size"]:
            return wait_quiet(max_wait=max(0.0, deadline - time.monotonic()))
        time.sleep(0.02)
    return False


def run_interleaved(trials: dict[str, Trial], outcomes: dict[str, Outcome], runs: int,
                    warmup: int, progress: Callable[[str], None] = print) -> None:
    """Call every available trial ``warmup + runs`` times, round-robin; record the last ``runs``.

    A trial that raises marks its contender unavailable (with the failing round in the reason)
    and is skipped from then on; the others carry on.
    """
    names = list(trials)
    for rnd in range(warmup + runs):
        shift = rnd % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            outcome = outcomes[name]
            if not outcome.available:
                continue
            wait_quiet()
            try:
                sample = trials[name]()
            except Exception as exc:  # a failing peer must never stop the run
                what = "warm-up" if rnd < warmup else f"run {rnd - warmup + 1}"
                outcome.mark_unavailable(f"{what} failed: {describe(exc)}")
                progress(f"  {name}: {outcome.reason}")
                continue
            if rnd >= warmup:
                outcome.record(sample)
        if rnd >= warmup:
            done = rnd - warmup + 1
            if done == runs or done % 5 == 0:
                progress(f"  {done}/{runs} rounds")


def _tail(data: bytes, limit: int = 300) -> str:
    text = data.decode(errors="replace").strip()
    return text[-limit:]


def _start(argv: Sequence[str], timeout: float) -> tuple[subprocess.Popen[bytes], threading.Timer]:
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        raise TrialError(f"cannot start {argv[0]}: {exc}") from exc
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.daemon = True
    watchdog.start()
    return proc, watchdog


def time_first_line(argv: Sequence[str], expect: str, timeout: float = 60.0) -> Sample:
    """Start ``argv`` and time until its first stdout line; also time until it exits.

    ``seconds`` is the time from just before ``fork/exec`` to the first line; the extra
    ``exit`` is the time until the process has exited (its teardown included).  The line must
    equal ``expect`` and the exit status must be 0, else :class:`TrialError`.
    """
    t0 = time.perf_counter()
    proc, watchdog = _start(argv, timeout)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        t1 = time.perf_counter()
        _, err = proc.communicate()
        t2 = time.perf_counter()
    finally:
        watchdog.cancel()
    if proc.returncode != 0 or line.decode(errors="replace").strip() != expect:
        raise TrialError(f"{argv[0]} exited {proc.returncode}, first line {line[:80]!r}, "
                         f"stderr: {_tail(err)}")
    return Sample(t1 - t0, {"exit": t2 - t0})


def time_command(argv: Sequence[str], timeout: float = 60.0) -> Sample:
    """Time ``argv`` from start to exit; it must exit 0."""
    t0 = time.perf_counter()
    proc, watchdog = _start(argv, timeout)
    try:
        _, err = proc.communicate()
        t1 = time.perf_counter()
    finally:
        watchdog.cancel()
    if proc.returncode != 0:
        raise TrialError(f"{argv[0]} exited {proc.returncode}: {_tail(err)}")
    return Sample(t1 - t0)


def check_output(argv: Sequence[str], timeout: float = 600.0,
                 stdin: int | None = subprocess.DEVNULL) -> str:
    """Run a set-up command; return its stdout, or raise :class:`Unavailable` with stderr."""
    try:
        proc = subprocess.run(list(argv), stdin=stdin, capture_output=True, timeout=timeout,
                              check=False)
    except FileNotFoundError as exc:
        raise Unavailable(f"{argv[0]} is not installed") from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"{' '.join(argv[:3])} failed: {describe(exc)}") from exc
    if proc.returncode != 0:
        raise Unavailable(f"{' '.join(argv[:3])} exited {proc.returncode}: {_tail(proc.stderr)}")
    return proc.stdout.decode(errors="replace")


def timed_runs(fn: Callable[[], object], runs: int) -> list[float]:
    """Seconds each of ``runs`` calls of ``fn`` took, in order."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples
