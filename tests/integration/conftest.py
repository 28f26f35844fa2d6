"""The integration suite runs one real engine, as the unprivileged user, for the session.

Its state lives apart from the user's own engine: a runtime dir under /tmp (short enough for
a Unix socket path) and a data dir under ~/.cache that survives runs, so the Debian base
image is built once per machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hutch.sdk.transport import request_blocking
from tests.helpers import engine_dirs, mark_tests_under, stop_engine

RUNTIME_DIR = Path(os.environ.get("HUTCH_TEST_RUNTIME", f"/tmp/hutch-it-{os.getuid()}"))
DATA_DIR = Path(os.environ.get("HUTCH_TEST_DATA", Path.home() / ".cache" / "hutch-it"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark_tests_under(items, Path(__file__).parent, "rootless")


@pytest.fixture(scope="session")
def engine() -> Iterator[dict[str, Any]]:
    if os.geteuid() == 0:
        pytest.skip("the rootless suite runs as an unprivileged user")
    with engine_dirs(RUNTIME_DIR, DATA_DIR):
        info: dict[str, Any] = request_blocking("GET", "/v1/engine")
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
