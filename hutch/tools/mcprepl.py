"""A Python interpreter that keeps its state between calls, one per sandbox, for the MCP
server's ``run_python`` tool (no ``mcp`` import here: the CLI loads this module).

Why not ``python3 -i`` on a terminal: a REPL's prompts, echo and continuation lines would
have to be parsed back out of its output, and nothing would tell where one snippet's
output ends.  Instead a small driver (:data:`DRIVER`, passed with ``-c``, no file left in
the sandbox) reads one JSON request per line on stdin and answers one JSON line on a
duplicate of its original stdout.  While a snippet runs, file descriptors 1 and 2 point at
an anonymous file, so ``print``, tracebacks, C extensions and child processes all land
there in the order written; the answer carries it, with the ``repr`` of a trailing
expression (as the REPL echoes it) and the traceback of an exception.  ``input()`` reads
``/dev/null`` rather than the request stream.

A snippet that runs past its timeout is killed with the interpreter and all it started:
its state is gone, which the error says, and the next call starts a fresh one.
"""

from __future__ import annotations

import json
import queue
import threading
from typing import Any

from hutch.sdk.process import ContainerProcess
from hutch.sdk.sandbox import Sandbox

#: Most bytes of output one snippet returns (the rest is dropped, and the answer says so).
MAX_OUTPUT = 1 << 20

DRIVER = r"""
import ast, json, os, sys, tempfile, traceback
answer = os.fdopen(os.dup(1), "w", encoding="utf-8")
requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
sink = tempfile.TemporaryFile()
os.dup2(sink.fileno(), 1)
os.dup2(sink.fileno(), 2)
sys.stdin = open(0, "r", closefd=False)
sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
scope = {"__name__": "__main__", "__builtins__": __builtins__}
LIMIT = LIMIT_BYTES
for line in requests:
    value = error = None
    try:
        tree = ast.parse(json.loads(line)["code"], "<run_python>", "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, "<run_python>", "exec"), scope)
        if last is not None:
            result = eval(compile(last, "<run_python>", "eval"), scope)
            if result is not None:
                scope["_"] = result
                value = repr(result)
    except BaseException as exc:
        error = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next))
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    size = sink.seek(0, 2)
    sink.seek(0)
    out = sink.read(LIMIT)
    sink.seek(0)
    sink.truncate()
    answer.write(json.dumps({"output": out.decode("utf-8", "replace"), "value": value,
                             "error": error, "truncated": size > LIMIT}) + "\n")
    answer.flush()
""".replace("LIMIT_BYTES", str(MAX_OUTPUT))


class ReplError(Exception):
    """The interpreter could not answer (timed out, exited, or never started)."""


class Repl:
    """One persistent interpreter in a sandbox; :meth:`run` one snippet at a time."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox_id = sandbox.object_id
        self._proc: ContainerProcess[str] = sandbox.exec(
            "python3", "-u", "-c", DRIVER, text=True, bufsize=1)
        self._answers: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self.alive = True
        threading.Thread(target=self._read, name=f"repl-{self.sandbox_id}",
                         daemon=True).start()

    def _read(self) -> None:
        """Answers (one per line) into the queue; ``None`` when the interpreter is gone."""
        try:
            for line in self._proc.stdout:
                self._answers.put(line)
        except Exception:  # (the sandbox ended under it: that ends the stream too)
            pass
        self._answers.put(None)

    def run(self, code: str, timeout: float) -> dict[str, Any]:
        """Run ``code``; its output, trailing value and traceback.  :class:`ReplError`
        when the interpreter does not answer within ``timeout`` seconds or has died."""
        with self._lock:
            if not self.alive:
                raise ReplError("the Python process has ended")
            try:
                self._proc.stdin.write((json.dumps({"code": code}) + "\n").encode())
                self._proc.stdin.drain()
            except Exception as exc:
                self.alive = False
                raise ReplError(f"the Python process does not take input: {exc}") from exc
            try:
                line = self._answers.get(timeout=timeout)
            except queue.Empty:
                self.close()
                raise ReplError(f"the code ran past its timeout of {timeout:g} s: the Python "
                                "process was killed and its variables are lost (the next "
                                "run_python starts a fresh one)") from None
            if line is None:
                self.alive = False
                code_ = self._proc.wait()
                detail = self._stderr_tail()
                raise ReplError(f"the Python process exited (exit code {code_}) and its "
                                f"variables are lost{': ' + detail if detail else ''}")
            answer: dict[str, Any] = json.loads(line)
            return answer

    def _stderr_tail(self) -> str:
        """The end of what the interpreter wrote before redirecting its output (why it
        could not start: no python3 in the image, say)."""
        try:
            return self._proc.stderr.read()[-2000:].strip()
        except Exception:
            return ""

    def close(self) -> None:
        """Kill the interpreter (and what it started), if it still runs."""
        self.alive = False
        try:
            self._proc.kill()
        except Exception:  # (already ended, or its sandbox has)
            pass
