"""hutch.modal.runner: choosing a program's local entrypoint and turning its parameters
into options, as ``modal run`` does."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from hutch.exception import InvalidError
from hutch.modal import runner
from hutch.sdk.appentries import LocalEntrypoint


def _entry(source: str) -> LocalEntrypoint:
    scope: dict[str, object] = {}
    exec(textwrap.dedent(source), scope)
    fn = scope["main"]
    assert callable(fn)
    return LocalEntrypoint(fn, "main")


def test_parameters_become_typed_options() -> None:
    entry = _entry("""
        def main(name: str, count: int = 1, ratio: float = 0.5, dry_run: bool = False):
            pass
    """)
    assert runner._arguments(entry, ["--name", "x", "--count", "3", "--dry-run"]) == {
        "name": "x", "count": 3, "ratio": 0.5, "dry_run": True}
    assert runner._arguments(entry, ["--name", "y", "--dry_run", "--no-dry-run"])[
        "dry_run"] is False
    with pytest.raises(SystemExit):
        runner._arguments(entry, [])  # --name is required
    with pytest.raises(SystemExit):
        runner._arguments(entry, ["--name", "x", "--count", "many"])


def test_choosing_the_entrypoint(tmp_path: Path) -> None:
    program = tmp_path / "two_entries.py"
    program.write_text(textwrap.dedent("""
        import hutch
        app = hutch.App("two")

        @app.local_entrypoint()
        def first():
            pass

        @app.local_entrypoint()
        def second():
            pass

        @app.function()
        def remote_only():
            pass
    """))
    module = runner._module(program)
    with pytest.raises(InvalidError, match="2 local entrypoints: name one"):
        runner._choose(module, "", program)
    assert runner._choose(module, "second", program)[1].name == "second"
    with pytest.raises(InvalidError, match="no local entrypoint 'third'"):
        runner._choose(module, "third", program)
    with pytest.raises(InvalidError, match="is a Modal Function"):
        runner._choose(module, "remote_only", program)
