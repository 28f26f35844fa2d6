"""Readiness probes and ``wait_until_ready``: Modal's guide examples G3, G4 and G5."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import pytest

import hutch as modal


@pytest.fixture
def app(engine: dict[str, Any]) -> Iterator[modal.App]:
    app = modal.App.lookup(f"probes-{uuid4().hex[:8]}", create_if_missing=True)
    yield app
    for sb in modal.Sandbox.list(app_id=app.app_id):
        sb.terminate()


def test_g3_tcp_probe(app: modal.App) -> None:
    sb = modal.Sandbox.create("python3", "-m", "http.server", "8080",
                              readiness_probe=modal.Probe.with_tcp(8080), app=app)
    sb.wait_until_ready()
    p = sb.exec("python3", "-c", "import urllib.request as u; "
                "print(u.urlopen('http://127.0.0.1:8080/').status)")
    assert p.stdout.read() == "200\n"  # ready means the port answers
    sb.terminate()
    sb.detach()


def test_g4_exec_probe(app: modal.App) -> None:
    sb = modal.Sandbox.create("bash", "-c", "sleep 1 && touch /tmp/ready && sleep 3600",
                              readiness_probe=modal.Probe.with_exec(
                                  "sh", "-c", "test -f /tmp/ready", interval_ms=250),
                              app=app)
    start = time.monotonic()
    sb.wait_until_ready()
    assert time.monotonic() - start >= 0.5  # it really waited for the file
    assert sb.exec("cat", "/tmp/ready").wait() == 0
    sb.terminate()


def test_g5_timeout(app: modal.App) -> None:
    sb = modal.Sandbox.create("sleep", "60", readiness_probe=modal.Probe.with_exec("false"),
                              app=app)
    with pytest.raises(modal.exception.TimeoutError, match="Timeout expired"):
        sb.wait_until_ready(timeout=1)
    sb.terminate()


def test_ready_once_stays_ready_and_errors(app: modal.App) -> None:
    sb = modal.Sandbox.create("sleep", "60", readiness_probe=modal.Probe.with_exec("true"),
                              app=app)
    sb.wait_until_ready()
    sb.wait_until_ready(timeout=0.5)  # returns at once now
    with pytest.raises(modal.exception.InvalidError, match="must be positive"):
        sb.wait_until_ready(timeout=0)
    sb.terminate()
    with pytest.raises(modal.exception.ConflictError):
        sb.wait_until_ready()
    plain = modal.Sandbox.create(app=app)
    with pytest.raises(modal.exception.InvalidError, match="no readiness_probe"):
        plain.wait_until_ready()
    plain.terminate()


def test_a_sandbox_that_ends_before_ready_is_a_conflict(app: modal.App) -> None:
    sb = modal.Sandbox.create("sh", "-c", "exit 3",
                              readiness_probe=modal.Probe.with_exec("false"), app=app)
    with pytest.raises(modal.exception.ConflictError):
        sb.wait_until_ready(timeout=30)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: modal.Probe.with_tcp("80"), "expects an integer `port`"),  # type: ignore[arg-type]
    (lambda: modal.Probe.with_tcp(0), r"in \[1, 65535\], got 0"),
    (lambda: modal.Probe.with_exec(), "requires at least one argument"),
    (lambda: modal.Probe.with_exec("a", 1), "all arguments to be strings"),  # type: ignore[arg-type]
    (lambda: modal.Probe.with_tcp(80, interval_ms=0), "`interval_ms` > 0"),
    (lambda: modal.Probe(), "Probe.with_tcp"),
])
def test_probe_arguments(make: Any, message: str) -> None:
    with pytest.raises(modal.exception.InvalidError, match=message):
        make()
