"""The integration suite: real sandboxes on the session's engine (``engine`` and
``sandbox`` fixtures in ``tests/conftest.py``), as the unprivileged user."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import mark_tests_under


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark_tests_under(items, Path(__file__).parent, "rootless")
