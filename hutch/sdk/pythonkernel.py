"""A Python interpreter that keeps its state between snippets, run in a sandbox over one
``Sandbox.exec``, and the client that drives it: the kernel behind smolagents'
``HutchExecutor`` (:mod:`hutch.integrations.smolagents`) and ``hutch mcp``'s ``run_python``
(:mod:`hutch.tools.mcpserver`).  It lives in the SDK because both use it and neither may
import the other; it is not exported from ``hutch``.

Why a kernel of our own rather than Jupyter's (which smolagents' Docker and Modal executors
start): it needs nothing in the image but ``python3`` (no ``jupyter_kernel_gateway``, no
port, no token, no HTTP server to wait for), so it is ready as soon as its sandbox is: a
smolagents executor in 0.06 s, one snippet's round trip 21-23 ms (docs/integrations.md).
And why not ``python3 -i``: a REPL's prompts, echo and continuation lines would have to be
parsed back out of its output, and nothing would tell where one snippet's output ends.

Protocol.  The kernel is ``python3 -u -c KERNEL CONFIG`` (:data:`KERNEL`; no file is left in
the sandbox), ``CONFIG`` a JSON object: ``filename`` (what tracebacks call the snippet),
``final_exception`` (the class name of an exception that ends a run with a value, as
smolagents' ``FinalAnswerException``, or null) and ``max_output`` (bytes).  It reads one
request per line from a duplicate of its stdin, ``{"code": "..."}``, and points fd 0 at
``/dev/null`` (``input()`` reads nothing rather than the next request).  While a snippet
runs, fds 1 and 2 point at an anonymous temporary file, so ``print``, tracebacks, C
extensions and child processes all land there in the order written: a
``redirect_stdout`` capture (the first smolagents kernel's) misses whatever writes to the
file descriptors.  For each request it writes one line on a duplicate of its original
stdout, which nothing else reaches (``os.dup`` makes it close-on-exec), so no marker is
needed to frame it::

    {"output": str, "truncated": bool, "value": str | null,
     "error": {"name": str, "value": str, "traceback": str} | null,
     "final": {"value": ...} | null}

``output`` is at most ``max_output`` bytes of what the snippet wrote (``truncated`` says
whether there was more), ``value`` the ``repr`` of a trailing expression (as the REPL echoes
it; it is also kept as ``_``), ``error`` an exception it raised (the traceback without the
kernel's own frame), ``final`` the ``value`` attribute of a ``final_exception``.  A snippet
that runs past its timeout is killed with the interpreter and all it started: its state is
gone, :class:`KernelLost` says so, and the next :meth:`PythonKernel.run` starts a fresh one.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import threading

from hutch.sdk.process import ContainerProcess
from hutch.sdk.sandbox import Sandbox

#: Most bytes of output one snippet returns by default (the rest is dropped, and counted).
MAX_OUTPUT = 1 << 20

KERNEL = r"""
import ast, json, os, sys, tempfile, traceback
config = json.loads(sys.argv[1])
NAME, FINAL, LIMIT = config["filename"], config["final_exception"], config["max_output"]
answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.close(null)
sink = tempfile.TemporaryFile()
os.dup2(sink.fileno(), 1)
os.dup2(sink.fileno(), 2)
sys.stdin = open(0, "r", closefd=False)
sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
scope = {"__name__": "__main__", "__builtins__": __builtins__}

def text(exc):
    try:
        return str(exc)
    except BaseException:
        return "<str() failed>"

def run(line):
    reply = {"value": None, "error": None, "final": None}
    try:
        tree = ast.parse(json.loads(line)["code"], NAME, "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, NAME, "exec"), scope)
        if last is not None:
            result = eval(compile(last, NAME, "eval"), scope)
            if result is not None:
                scope["_"] = result
                reply["value"] = repr(result)
    except BaseException as exc:
        if FINAL is not None and type(exc).__name__ == FINAL:
            reply["final"] = {"value": getattr(exc, "value", None)}
        else:
            trace = traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next)
            reply["error"] = {"name": type(exc).__name__, "value": text(exc),
                              "traceback": "".join(trace)}
    return reply

for line in requests:
    reply = run(line)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    size = sink.seek(0, 2)
    sink.seek(0)
    out = sink.read(LIMIT)
    sink.seek(0)
    sink.truncate()
    reply["output"] = out.decode("utf-8", "replace")
    reply["truncated"] = size > LIMIT
    answers.write(json.dumps(reply, default=repr) + "\n")
    answers.flush()
"""


class KernelLost(Exception):
    """The kernel did not answer: the snippet ran past its timeout, or the interpreter
    exited or never started.  Its variables are gone; the next run starts a fresh one."""


@dataclasses.dataclass(frozen=True)
class CodeError:
    """An exception the snippet raised."""

    name: str
    value: str
    traceback: str


@dataclasses.dataclass(frozen=True)
class FinalAnswer:
    """The ``value`` of the kernel's ``final_exception``, raised by the snippet."""

    value: object


@dataclasses.dataclass(frozen=True)
class KernelReply:
    """One snippet's result (the fields of the reply line: see the module's docstring)."""

    output: str
    truncated: bool
    value: str | None
    error: CodeError | None
    final: FinalAnswer | None


def request(code: str) -> bytes:
    """The line that asks the kernel to run ``code``."""
    return json.dumps({"code": code}).encode() + b"\n"


def parse_reply(line: str) -> KernelReply:
    """The reply line the kernel wrote; ``ValueError`` if it is not one."""
    data = json.loads(line)
    if not isinstance(data, dict) or not isinstance(data.get("output"), str):
        raise ValueError(f"not a kernel reply: {line[:200]!r}")
    error, final, value = data.get("error"), data.get("final"), data.get("value")
    return KernelReply(
        output=data["output"], truncated=bool(data.get("truncated")),
        value=value if isinstance(value, str) else None,
        error=CodeError(str(error.get("name")), str(error.get("value")),
                        str(error.get("traceback"))) if isinstance(error, dict) else None,
        final=FinalAnswer(final.get("value")) if isinstance(final, dict) else None)


def pip_names(imports: list[str]) -> list[str]:
    """The distributions to ``pip install`` for a list of imports: top-level names, without
    ``*`` (the "any import" wildcard of smolagents' authorized imports), each once, in the
    order given."""
    names: list[str] = []
    for name in imports:
        top = name.strip().split(".")[0]
        if top and top != "*" and top not in names:
            names.append(top)
    return names


class PythonKernel:
    """One kernel in ``sandbox`` (started here); :meth:`run` one snippet at a time, from
    any thread.  ``python``: the interpreter to start; ``filename``, ``final_exception``,
    ``max_output``: the kernel's ``CONFIG`` (module docstring)."""

    def __init__(self, sandbox: Sandbox, *, python: str = "python3", filename: str = "<code>",
                 final_exception: str | None = None, max_output: int = MAX_OUTPUT) -> None:
        self.sandbox = sandbox
        self.python = python
        self._config = json.dumps({"filename": filename, "final_exception": final_exception,
                                   "max_output": max_output})
        self._lock = threading.Lock()
        self._closed = False
        self._process: ContainerProcess[str] | None = None
        self._answers: queue.Queue[str | None] = queue.Queue()
        self._start()

    def _start(self) -> None:
        process: ContainerProcess[str] = self.sandbox.exec(
            self.python, "-u", "-c", KERNEL, self._config, text=True, bufsize=1)
        answers: queue.Queue[str | None] = queue.Queue()

        def read() -> None:
            """Replies (one per line) into the queue; ``None`` when the kernel is gone.
            (A thread per kernel: callers are synchronous, and a restarted kernel's replies
            never mix with its predecessor's.)"""
            try:
                for line in process.stdout:
                    answers.put(line)
            except Exception:  # (the sandbox ended under it: that ends the stream too)
                pass
            answers.put(None)

        self._process, self._answers = process, answers
        threading.Thread(target=read, name=f"kernel-{process.object_id}", daemon=True).start()

    def run(self, code: str, timeout: float) -> KernelReply:
        """Run ``code``; what it printed, its trailing value, its exception.
        :class:`KernelLost` when the kernel does not answer within ``timeout`` seconds or
        has ended (it is killed, with what it started)."""
        with self._lock:
            if self._closed:
                raise KernelLost("the Python process was closed")
            if self._process is None:
                self._start()
            process = self._process
            assert process is not None
            try:
                process.stdin.write(request(code))
                process.stdin.drain()
            except Exception as exc:  # (it has ended: its stdin is closed)
                raise self._ended(process) from exc
            try:
                line = self._answers.get(timeout=timeout)
            except queue.Empty:
                self._lose()
                raise KernelLost(f"the code ran past its timeout of {timeout:g} s: the Python "
                                 "process was killed and its variables are lost (the next "
                                 "run starts a fresh one)") from None
            if line is None:
                raise self._ended(process)
            try:
                return parse_reply(line)
            except ValueError as exc:
                self._lose()
                raise KernelLost(f"the Python process answered out of protocol ({exc}); it "
                                 "was killed and its variables are lost") from None

    def _lose(self) -> int | None:
        """Kill the kernel and what it started; its exit code (None if unknown)."""
        process, self._process = self._process, None
        if process is None:
            return None
        try:
            return process.kill()
        except Exception:  # (its sandbox has ended: so has the kernel)
            return None

    def _ended(self, process: ContainerProcess[str]) -> KernelLost:
        """The error for a kernel that ended by itself, with its exit code and the end of
        what it wrote before it redirected its output (why it could not start: no
        ``python3`` in the image, say)."""
        code = self._lose()
        try:
            detail = process.stderr.read()[-2000:].strip()
        except Exception:
            detail = ""
        status = "" if code is None else f" (exit code {code})"
        return KernelLost(f"the Python process exited{status} and its variables are lost "
                          f"(the next run starts a fresh one){': ' + detail if detail else ''}")

    def close(self) -> None:
        """Kill the kernel (and what it started), if it still runs; later runs fail.  (Not
        under the run lock: a snippet that runs now ends with :class:`KernelLost`.)"""
        self._closed = True
        self._lose()
