"""smolagents' hutch kernel and its protocol, with the kernel run by this Python (no
sandbox: what is checked is the protocol and the kernel's own logic)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from hutch.integrations import smolkernel

MARK = "\x1ehutch-kernel-test\x1f"


def test_replies_are_framed_by_the_mark_whatever_comes_around_them() -> None:
    reader = smolkernel.ReplyReader(MARK)
    reply = (MARK + json.dumps({"output": "1"}) + "\n").encode()
    items = reader.feed(b"stray line\npartial")
    assert items == [("stray", "stray line\n")]
    items = reader.feed(reply[:5])  # (a chunk may end anywhere, in the mark too)
    assert items == []
    assert reader.feed(reply[5:]) == [("stray", "partial"), ("reply", {"output": "1"})]
    assert reader.rest() == ""


def test_a_utf8_character_cut_between_chunks_survives() -> None:
    reader = smolkernel.ReplyReader(MARK)
    data = "é\n".encode()
    assert reader.feed(data[:1]) == []
    assert reader.feed(data[1:]) == [("stray", "é\n")]


def test_a_mark_without_json_is_output() -> None:
    reader = smolkernel.ReplyReader(MARK)
    assert reader.feed((MARK + "not json\n").encode()) == [("stray", MARK + "not json\n")]


def test_pip_names_are_top_level_without_the_wildcard() -> None:
    assert smolkernel.pip_names(["numpy.linalg", "*", "pandas", "numpy", " "]) == [
        "numpy", "pandas"]


@pytest.fixture
def kernel() -> Any:
    process = subprocess.Popen([sys.executable, "-u", "-c", smolkernel.KERNEL, MARK],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    reader = smolkernel.ReplyReader(MARK)

    def run(code: str) -> tuple[str, dict[str, Any]]:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(smolkernel.request(code))
        process.stdin.flush()
        stray = ""
        while True:  # (each line read blocks until it comes; the test's timeout bounds it)
            for kind, value in reader.feed(process.stdout.readline()):
                if kind == "reply":
                    return stray, value
                stray += value

    yield run
    process.kill()
    process.wait(timeout=10)


def test_the_kernel_keeps_state_and_returns_the_last_expression(kernel: Any) -> None:
    assert kernel("x = 20\nprint('set')")[1] == {"output": None, "final": None,
                                                 "error": None, "logs": "set\n"}
    assert kernel("x + 22")[1]["output"] == "42"
    assert kernel("'a' * 2")[1]["output"] == "'aa'"


def test_the_kernel_reports_errors_and_final_answers(kernel: Any) -> None:
    error = kernel("print('before')\n1 / 0")[1]
    assert error["error"]["name"] == "ZeroDivisionError"
    assert "1 / 0" not in error["logs"] and error["logs"] == "before\n"
    assert "ZeroDivisionError" in error["error"]["traceback"]
    final = kernel("class FinalAnswerException(BaseException):\n"
                   "    def __init__(self, value):\n        self.value = value\n"
                   "raise FinalAnswerException('safe:42')")[1]
    assert final["final"] == "safe:42" and final["error"] is None
    assert kernel("raise SystemExit(3)")[1]["error"]["name"] == "SystemExit"
    assert kernel("1 + 1")[1]["output"] == "2"  # (still alive after all of them)


def test_output_written_to_the_file_descriptors_is_stray_not_a_reply(kernel: Any) -> None:
    stray, reply = kernel("import os\nos.write(1, b'raw out\\n')\nos.write(2, b'raw err')\n7")
    assert stray == "raw out\nraw err"
    assert reply["output"] == "7"
