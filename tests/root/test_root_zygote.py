"""Execs of a root engine start from zygotes too, confined like the entrypoint."""

from __future__ import annotations

from typing import Any

import hutch
from tests.integration.test_zygote import _check_errors, _check_like_the_entrypoint


def test_root_execs_start_from_a_zygote(root_engine: dict[str, Any]) -> None:
    assert root_engine["exec_via"] == "zygote"
    sb = hutch.Sandbox.create(timeout=60)
    try:
        _check_like_the_entrypoint(sb)
        _check_errors(sb)
    finally:
        sb.terminate()
