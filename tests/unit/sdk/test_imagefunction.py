"""run_function's program: run here, by this Python, in a subprocess, as the build's
Python runs it (the integration test runs it in an image)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hutch.exception import InvalidError
from hutch.sdk import imagefunction

GREETING = "hello"
LIMITS = {"n": [1, 2, (3, 4)]}
OPEN_FILE = open(os.devnull)  # noqa: SIM115 (a module-level object that cannot travel)


def _helper(x: int) -> int:
    return x * LIMITS["n"][1]


class _Box:
    def __init__(self, v: int) -> None:
        self.v = v


def decorate(f: Any) -> Any:
    return f


@decorate
def build_step(path: str, times: int, *, suffix: str = "") -> None:
    box = _Box(_helper(times))
    with open(os.path.join(path, "out.json"), "w") as f:
        json.dump({"greeting": GREETING + suffix, "value": box.v}, f)


def uses_open_file() -> None:
    print(OPEN_FILE)


def test_the_program_defines_what_the_function_needs_and_calls_it(tmp_path: Path) -> None:
    text = imagefunction.program(build_step, (str(tmp_path), 21), {"suffix": "!"})
    assert "@decorate" not in text and "import json" in text
    subprocess.run([sys.executable, "-c", text], check=True, cwd=tmp_path,
                   env={"PATH": os.environ["PATH"]})
    assert json.loads((tmp_path / "out.json").read_text()) == {"greeting": "hello!",
                                                               "value": 42}


def test_the_command_runs_with_python3_only(tmp_path: Path) -> None:
    command = imagefunction.command(build_step, (str(tmp_path), 1), {}, True)
    assert command.startswith("python3 -c '") and "\n" not in command
    subprocess.run(["sh", "-c", command.replace("python3", sys.executable, 1)], check=True)
    assert json.loads((tmp_path / "out.json").read_text())["value"] == 2


def test_include_source_false_imports_the_function(tmp_path: Path) -> None:
    import shutil

    (tmp_path / "a").write_text("copied")
    command = imagefunction.command(shutil.copy, (str(tmp_path / "a"), str(tmp_path / "b")),
                                    {}, False)
    subprocess.run(["sh", "-c", command.replace("python3", sys.executable, 1)], check=True)
    assert (tmp_path / "b").read_text() == "copied"


def _closure() -> Any:
    value = 1

    def inner() -> int:
        return value

    return inner


@pytest.mark.parametrize(("fn", "args", "message"), [
    (lambda: None, (), "lambda"),
    (print, (), "must be a function"),
    (uses_open_file, (), "OPEN_FILE"),
    (_closure(), (), "variables of the function"),
    (build_step, (OPEN_FILE,), "plain data"),
])
def test_what_cannot_travel_is_named(fn: Any, args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(InvalidError, match=message):
        imagefunction.program(fn, args, {})


def uses_an_attribute_named_like_a_global(ns: Any) -> Any:
    return ns.OPEN_FILE  # an attribute, not the module's OPEN_FILE


def test_attribute_names_are_not_globals() -> None:
    text = imagefunction.program(uses_an_attribute_named_like_a_global, (None,), {})
    assert "OPEN_FILE" not in text.split("def ")[0]
