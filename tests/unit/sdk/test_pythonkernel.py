"""The Python kernel of smolagents' executor and ``hutch mcp``'s ``run_python``, and its
client, with the kernel run by this Python behind a fake sandbox whose ``exec`` starts a
host process (what is checked is the protocol, the kernel's logic and the client's
handling of timeouts and deaths; tests/integration/test_integration_smolagents.py and
test_mcp_server.py run it in sandboxes)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hutch.sdk import pythonkernel
from hutch.sdk.pythonkernel import KernelLost, PythonKernel


class _Stdout:
    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe

    def __iter__(self) -> Iterator[str]:
        for raw in iter(self.pipe.readline, b""):
            yield raw.decode()

    def read(self) -> str:
        return str(self.pipe.read().decode())


class _Stdin:
    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe

    def write(self, data: bytes) -> None:
        self.pipe.write(data)

    def drain(self) -> None:
        self.pipe.flush()


class FakeProcess:
    """What the kernel uses of a ``ContainerProcess``, over a host process."""

    def __init__(self, argv: list[str]) -> None:
        self.popen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)
        self.object_id = f"ex-{self.popen.pid}"
        self.stdin, self.stdout = _Stdin(self.popen.stdin), _Stdout(self.popen.stdout)
        self.stderr = _Stdout(self.popen.stderr)

    def kill(self) -> int:
        self.popen.kill()
        return self.popen.wait()


class FakeSandbox:
    """``exec`` starts a host process (``python3`` is this Python)."""

    def __init__(self) -> None:
        self.processes: list[FakeProcess] = []

    def exec(self, *argv: str, text: bool, bufsize: int) -> FakeProcess:
        assert text and bufsize == 1
        program = sys.executable if argv[0] == "python3" else argv[0]
        self.processes.append(FakeProcess([program, *argv[1:]]))
        return self.processes[-1]


@pytest.fixture
def sandbox() -> Iterator[FakeSandbox]:
    sb = FakeSandbox()
    yield sb
    for process in sb.processes:
        process.kill()
        for pipe in (process.popen.stdin, process.popen.stdout, process.popen.stderr):
            assert pipe is not None
            with contextlib.suppress(BrokenPipeError):  # (input it never read)
                pipe.close()


def kernel(sandbox: FakeSandbox, **options: Any) -> PythonKernel:
    return PythonKernel(sandbox, **options)  # type: ignore[arg-type]


def test_the_reply_line_is_one_json_object() -> None:
    """The wire format, spoken to the kernel directly."""
    config = json.dumps({"filename": "<x>", "final_exception": None, "max_output": 100})
    done = subprocess.run([sys.executable, "-u", "-c", pythonkernel.KERNEL, config],
                          input=pythonkernel.request("print('hi')\n6 * 7"),
                          capture_output=True, timeout=60, check=True)
    assert json.loads(done.stdout) == {"output": "hi\n", "truncated": False, "value": "42",
                                       "error": None, "final": None}
    reply = pythonkernel.parse_reply(done.stdout.decode())
    assert (reply.output, reply.value, reply.error, reply.final) == ("hi\n", "42", None, None)


def test_state_stays_and_the_trailing_expression_is_the_value(sandbox: FakeSandbox) -> None:
    k = kernel(sandbox)
    first = k.run("x = 20\nprint('set')", 30)
    assert (first.output, first.value, first.error, first.truncated) == ("set\n", None, None,
                                                                         False)
    assert k.run("x + 22", 30).value == "42"
    assert k.run("_ + 1", 30).value == "43"  # (the last value is kept as _)
    assert k.run("'é' * 2", 30).value == "'éé'"
    assert k.run("None", 30).value is None


def test_all_output_is_captured_in_order_and_input_reads_nothing(sandbox: FakeSandbox) -> None:
    k = kernel(sandbox)
    reply = k.run("import os, subprocess, sys\nprint('one')\nos.write(1, b'two\\n')\n"
                  "subprocess.run(['echo', 'three'])\nprint('four', file=sys.stderr)\n"
                  "os.write(2, b'five\\n')\ninput()", 30)
    assert reply.output == "one\ntwo\nthree\nfour\nfive\n"
    assert reply.error is not None and reply.error.name == "EOFError"
    assert k.run("print('next')", 30).output == "next\n"  # (each reply has its own output)


def test_errors_come_with_their_traceback_and_the_kernel_lives_on(
        sandbox: FakeSandbox) -> None:
    k = kernel(sandbox, filename="<run_python>")
    failed = k.run("print('before')\ndef f():\n    return 1 / 0\nf()", 30)
    assert failed.output == "before\n" and failed.error is not None
    assert (failed.error.name, failed.error.value) == ("ZeroDivisionError", "division by zero")
    assert 'File "<run_python>", line 4' in failed.error.traceback
    assert "json.loads" not in failed.error.traceback  # (not the kernel's own frame)
    assert k.run("def (", 30).error.name == "SyntaxError"  # type: ignore[union-attr]
    assert k.run("raise SystemExit(3)", 30).error.name == "SystemExit"  # type: ignore[union-attr]
    assert k.run("1 + 1", 30).value == "2"


def test_the_final_exception_ends_with_its_value_only_when_named(sandbox: FakeSandbox) -> None:
    define = ("class FinalAnswerException(BaseException):\n"
              "    def __init__(self, value):\n        self.value = value\n")
    k = kernel(sandbox, final_exception="FinalAnswerException")
    final = k.run(define + "print('said')\nraise FinalAnswerException('safe:42')", 30)
    assert final.final is not None and final.final.value == "safe:42"
    assert final.error is None and final.output == "said\n"
    odd = k.run("raise FinalAnswerException({1, 2})", 30)  # (not JSON: its repr)
    assert odd.final is not None and odd.final.value == "{1, 2}"
    plain = kernel(sandbox).run(define + "raise FinalAnswerException('x')", 30)
    assert plain.final is None and plain.error is not None


def test_output_past_the_limit_is_cut_and_said_so(sandbox: FakeSandbox) -> None:
    k = kernel(sandbox, max_output=100)
    big = k.run("print('a' * 1000)", 30)
    assert big.truncated and big.output == "a" * 100
    small = k.run("print('b')", 30)
    assert not small.truncated and small.output == "b\n"


def test_a_timeout_kills_the_kernel_and_the_next_run_starts_a_fresh_one(
        sandbox: FakeSandbox) -> None:
    k = kernel(sandbox)
    k.run("kept = 1", 30)
    began = time.monotonic()
    with pytest.raises(KernelLost, match=r"timeout of 0\.5 s.*variables are lost"):
        k.run("import time\ntime.sleep(30)", 0.5)
    assert time.monotonic() - began < 10
    assert sandbox.processes[0].popen.poll() is not None
    assert k.run("'kept' in globals()", 30).value == "False"
    assert len(sandbox.processes) == 2


def test_an_exit_is_reported_with_its_code_and_recovered_from(sandbox: FakeSandbox) -> None:
    k = kernel(sandbox)
    with pytest.raises(KernelLost, match=r"exited \(exit code 3\)"):
        k.run("import os\nos._exit(3)", 30)
    assert k.run("2 * 3", 30).value == "6"


@pytest.mark.parametrize("ended_first", [False, True])  # (its stdin open, or closed)
def test_a_kernel_that_cannot_start_says_why(sandbox: FakeSandbox, tmp_path: Path,
                                             ended_first: bool) -> None:
    missing = tmp_path / "nopython"
    missing.write_text("#!/bin/sh\necho 'python3: not found' >&2\nexit 127\n")
    missing.chmod(0o755)
    k = kernel(sandbox, python=str(missing))
    if ended_first:
        sandbox.processes[0].popen.wait(timeout=30)
    with pytest.raises(KernelLost, match=r"exit code 127.*python3: not found"):
        k.run("1", 30)


def test_close_ends_a_running_snippet_and_later_runs(sandbox: FakeSandbox) -> None:
    k = kernel(sandbox)
    failures: list[BaseException] = []

    def slow() -> None:
        try:
            k.run("import time\ntime.sleep(30)", 60)
        except BaseException as e:
            failures.append(e)

    runner = threading.Thread(target=slow)
    runner.start()
    time.sleep(0.3)
    k.close()
    runner.join(timeout=10)
    assert not runner.is_alive() and isinstance(failures[0], KernelLost)
    with pytest.raises(KernelLost, match="closed"):
        k.run("1", 30)


def test_pip_names_are_top_level_without_the_wildcard() -> None:
    assert pythonkernel.pip_names(["numpy.linalg", "*", "pandas", "numpy", " "]) == [
        "numpy", "pandas"]
