"""Shared test set-up: where the OCI JSON schemas are, and who may run which test.

Tests marked ``root`` need real root; the rest run as the unprivileged user (the engine
exists to be rootless), and integration tests refuse to run as root unless marked ``root``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HUTCH_OCI_SCHEMAS", str(Path(__file__).parent / "data" / "oci-schemas"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = os.geteuid() == 0
    for item in items:
        if item.get_closest_marker("root") and not root:
            item.add_marker(pytest.mark.skip(reason="needs root (tools/run-tests.sh runs it)"))
        if item.get_closest_marker("rootless") and root:
            item.add_marker(pytest.mark.skip(
                reason="runs the engine as an unprivileged user (tools/run-tests.sh does)"))
