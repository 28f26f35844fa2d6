"""benchmarks.harness: statistics, and the wait for a quiet machine before each trial."""

from __future__ import annotations

import time

import pytest

from benchmarks import harness
from benchmarks.harness import Outcome, Sample, Stats, run_interleaved


def test_stats_are_medians_and_percentiles() -> None:
    stats = Stats.of([0.005, 0.001, 0.003, 0.002, 0.004])
    assert stats.median == 0.003 and stats.n == 5
    assert stats.p10 <= stats.median <= stats.p90


def test_wait_quiet_sees_a_quiet_window() -> None:
    # any machine is "quiet" when every share of busy time is allowed
    assert harness.wait_quiet(share=1.0, window=0.01, max_wait=1.0) is True


def test_wait_quiet_gives_up_at_its_deadline() -> None:
    t0 = time.monotonic()
    assert harness.wait_quiet(share=-1.0, window=0.01, max_wait=0.1) is False
    assert 0.1 <= time.monotonic() - t0 < 1.0


def test_every_trial_waits_for_quiet_first(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(harness, "wait_quiet", lambda: calls.append("quiet"))

    def trial(name: str) -> harness.Trial:
        def run() -> Sample:
            calls.append(name)
            return Sample(0.001)
        return run

    outcomes = {"a": Outcome("a", "a"), "b": Outcome("b", "b")}
    run_interleaved({"a": trial("a"), "b": trial("b")}, outcomes, runs=2, warmup=0,
                    progress=lambda _: None)
    assert calls == ["quiet", "a", "quiet", "b", "quiet", "b", "quiet", "a"]
    assert all(len(o.samples) == 2 for o in outcomes.values())
