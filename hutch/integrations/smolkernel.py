"""The small Python kernel that smolagents' hutch executor keeps running in its sandbox, and
the protocol spoken with it over the exec's stdin and stdout; free of smolagents, so that it
is unit tested where smolagents is not installed.

Why a kernel of our own rather than Jupyter's (which smolagents' Docker and Modal executors
start): it needs nothing in the image but ``python3`` (no ``jupyter_kernel_gateway``, no
port, no token, no HTTP server to wait for), so an executor is ready as soon as its sandbox
is: a few tens of milliseconds.

Protocol: one request per line on stdin, ``{"code": "..."}``; one reply per request on
stdout, a line ``MARK{json}`` where ``MARK`` is a random token given to the kernel when it
starts, and the JSON holds ``logs`` (what the code printed), ``output`` (``repr`` of the
value of a last expression, as Jupyter's ``text/plain``, or ``None``), ``final`` (the
serialized value of a ``FinalAnswerException``, smolagents' way to end a run) and ``error``
(``{name, value, traceback}``).  Anything else on stdout (a subprocess that wrote to the
file descriptor itself) is output too, and kept with the logs: the marker is what frames a
reply, so stray output never breaks the protocol.
"""

from __future__ import annotations

import json
from typing import Any

KERNEL = r'''
import ast, io, json, os, sys, traceback
from contextlib import redirect_stderr, redirect_stdout

MARK = sys.argv[1]
replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
os.dup2(1, 2)  # (fd-level stderr of subprocesses joins stdout: one stream to read)
namespace = {"__name__": "__main__", "__builtins__": __builtins__}
for line in sys.stdin.buffer:
    code = json.loads(line)["code"]
    logs = io.StringIO()
    reply = {"output": None, "final": None, "error": None}
    try:
        with redirect_stdout(logs), redirect_stderr(logs):
            tree = ast.parse(code, "<code>", "exec")
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last = ast.Expression(tree.body.pop().value)
            exec(compile(tree, "<code>", "exec"), namespace)
            if last is not None:
                value = eval(compile(last, "<code>", "eval"), namespace)
                if value is not None:
                    reply["output"] = repr(value)
    except BaseException as e:
        if type(e).__name__ == "FinalAnswerException":
            reply["final"] = getattr(e, "value", None)
        else:
            reply["error"] = {"name": type(e).__name__, "value": str(e),
                              "traceback": traceback.format_exc()}
    reply["logs"] = logs.getvalue()
    sys.stdout.flush()
    replies.write(MARK + json.dumps(reply) + "\n")
    replies.flush()
'''


def request(code: str) -> bytes:
    """The line that asks the kernel to run ``code``."""
    return json.dumps({"code": code}).encode() + b"\n"


class ReplyReader:
    """Splits the kernel's stdout, fed in chunks as they come, into stray output and
    replies.  Lines are cut on bytes (a chunk may end inside a UTF-8 character)."""

    def __init__(self, mark: str) -> None:
        self._mark = mark
        self._pending = b""

    def feed(self, chunk: bytes) -> list[tuple[str, Any]]:
        """``("stray", text)`` and ``("reply", dict)`` items, in order, for the complete
        lines so far."""
        self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        found: list[tuple[str, Any]] = []
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            before, sep, body = line.partition(self._mark)
            if not sep:
                found.append(("stray", line + "\n"))
                continue
            if before:
                found.append(("stray", before))
            try:
                reply = json.loads(body)
            except ValueError:
                found.append(("stray", line + "\n"))
                continue
            if isinstance(reply, dict):
                found.append(("reply", reply))
        return found

    def rest(self) -> str:
        """What came after the last full line (output of a kernel that ended)."""
        return self._pending.decode("utf-8", "replace")


def pip_names(imports: list[str]) -> list[str]:
    """The distributions to install for smolagents' authorized imports: top-level names,
    without ``*`` (its "any import" wildcard), each once, in the order given."""
    names: list[str] = []
    for name in imports:
        top = name.strip().split(".")[0]
        if top and top != "*" and top not in names:
            names.append(top)
    return names
