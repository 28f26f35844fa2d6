"""The root suite: the same engine run by real root (no user namespace, /run-style dirs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hutch.sdk.transport import request_blocking
from tests.helpers import engine_dirs, mark_tests_under, stop_engine

RUNTIME_DIR = Path("/tmp/hutch-root-it")
DATA_DIR = Path("/var/tmp/hutch-root-it")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark_tests_under(items, Path(__file__).parent, "root")


@pytest.fixture(scope="session")
def root_engine() -> Iterator[dict[str, Any]]:
    with engine_dirs(RUNTIME_DIR, DATA_DIR):
        info: dict[str, Any] = request_blocking("GET", "/v1/engine")
        request_blocking("POST", "/v1/images/default")
        yield info
        stop_engine()
