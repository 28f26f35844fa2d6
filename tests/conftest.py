"""Shared test set-up: where the OCI JSON schemas are, and who may run which test.

Tests marked ``root`` need real root; the rest run as the unprivileged user (the engine
exists to be rootless), and integration tests refuse to run as root unless marked ``root``.

The rootless suites (integration, security) share one real engine for the session.  Its
state lives apart from the user's own engine: a runtime dir under /tmp (short enough for a
Unix socket path) and a data dir under ~/.cache that survives runs, so the Debian base image
is built once per machine.  When a session starts, the cached build steps beyond
``CACHE_KEEP_BYTES`` (least recently used first) are forgotten: many tests build images
with unique contents, and without this a CI machine's data dir held 4,089 of them (43 GB,
made in 17 hours); what the suite reuses it hits every run, and so keeps.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hutch.sdk.transport import request_blocking
from tests.helpers import engine_dirs, stop_engine

os.environ.setdefault("HUTCH_OCI_SCHEMAS", str(Path(__file__).parent / "data" / "oci-schemas"))

RUNTIME_DIR = Path(os.environ.get("HUTCH_TEST_RUNTIME", f"/tmp/hutch-it-{os.getuid()}"))
DATA_DIR = Path(os.environ.get("HUTCH_TEST_DATA", Path.home() / ".cache" / "hutch-it"))
#: Compressed bytes of cached build steps a session starts with at most.
CACHE_KEEP_BYTES = 2 << 30


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = os.geteuid() == 0
    for item in items:
        if item.get_closest_marker("root") and not root:
            item.add_marker(pytest.mark.skip(reason="needs root (tools/run-tests.sh runs it)"))
        if item.get_closest_marker("rootless") and root:
            item.add_marker(pytest.mark.skip(
                reason="runs the engine as an unprivileged user (tools/run-tests.sh does)"))


@pytest.fixture(scope="session")
def engine() -> Iterator[dict[str, Any]]:
    if os.geteuid() == 0:
        pytest.skip("the rootless suite runs as an unprivileged user")
    with engine_dirs(RUNTIME_DIR, DATA_DIR):
        info: dict[str, Any] = request_blocking("GET", "/v1/engine")
        request_blocking("POST", "/v1/images/prune",
                         params={"cache_keep_bytes": CACHE_KEEP_BYTES})
        # Build (or find) the default image once, before any timed expectation.
        request_blocking("POST", "/v1/images/default")
        yield info
        stop_engine()


@pytest.fixture
def sandbox(engine: dict[str, Any]) -> Iterator[Any]:
    import hutch

    sb = hutch.Sandbox.create(timeout=120)
    yield sb
    sb.terminate(grace_period=0)
