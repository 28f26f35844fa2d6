"""hutch as smolagents' code executor: ``CodeAgent(tools, model, executor=HutchExecutor())``.

smolagents picks its remote executors from a fixed table (``executor_type`` is one of
``local``, ``blaxel``, ``e2b``, ``modal``, ``docker``; it reads no entry points), so hutch's
is passed as an object.  It implements ``RemotePythonExecutor`` as smolagents' E2B, Docker
and Modal executors do: the agent's code runs in a long-lived Python process in a hutch
sandbox, so variables, imports and functions stay between steps; tools are sent as their
source (``send_tools``) and variables serialized (``send_variables``), both by smolagents'
own code; ``final_answer`` raises the ``FinalAnswerException`` that ends the run.

Why not Jupyter as their Docker and Modal executors: a kernel gateway needs a package
install, a port and an HTTP server to wait for; hutch's exec already gives a process with a
stdin and a stdout, so a 40-line kernel (:mod:`hutch.integrations.smolkernel`) on them is
ready the moment the sandbox is, and needs only ``python3`` in the image.
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
from typing import Any

from smolagents.local_python_executor import CodeOutput
from smolagents.monitoring import AgentLogger, LogLevel
from smolagents.remote_executors import RemotePythonExecutor
from smolagents.utils import AgentError

import hutch
from hutch.integrations import smolkernel

__all__ = ["HutchExecutor"]


class HutchExecutor(RemotePythonExecutor):  # type: ignore[misc]
    """Runs a ``CodeAgent``'s code in a hutch sandbox.

    ``additional_imports``: packages to ``pip install`` into the sandbox first (as the other
    remote executors do; an image with them is faster: ``image=``).  ``logger``: smolagents'
    ``AgentLogger`` (a default one if left out).  ``image``: default
    ``Image.debian_slim()``; ``sandbox``: a running sandbox to use (left running at
    ``cleanup``); ``create_kwargs``: more ``Sandbox.create`` arguments (``timeout``,
    ``block_network``, ``cpu``, ``memory``, ...).  ``timeout``: seconds one code action may
    run; past it the kernel is restarted (its variables are lost) and the step fails.
    """

    def __init__(self, additional_imports: list[str] | None = None,
                 logger: AgentLogger | None = None, allow_pickle: bool = False, *,
                 image: hutch.Image | None = None, sandbox: hutch.Sandbox | None = None,
                 app_name: str = "smolagents-executor",
                 create_kwargs: dict[str, Any] | None = None,
                 python: str = "python3", timeout: float = 300.0) -> None:
        super().__init__(list(additional_imports or []),
                         logger or AgentLogger(level=LogLevel.INFO), allow_pickle)
        self.python = python
        self.timeout = timeout
        self._lock = threading.Lock()
        self._owns_sandbox = sandbox is None
        if sandbox is None:
            options: dict[str, Any] = {"timeout": 3600, **(create_kwargs or {})}
            options.setdefault("app", hutch.App.lookup(app_name, create_if_missing=True))
            options.setdefault("image", image or hutch.Image.debian_slim())
            sandbox = hutch.Sandbox.create(**options)
        self.sandbox: hutch.Sandbox | None = sandbox
        self._start_kernel()
        self.installed_packages = self.install_packages(self.additional_imports)
        self.logger.log(f"hutch sandbox {sandbox.object_id} is running", level=LogLevel.INFO)

    def _start_kernel(self) -> None:
        assert self.sandbox is not None
        mark = f"\x1ehutch-kernel-{secrets.token_hex(12)}\x1f"
        self._process = self.sandbox.exec(self.python, "-u", "-c", smolkernel.KERNEL, mark,
                                          text=False)
        self._items: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        reader = smolkernel.ReplyReader(mark)
        process, items = self._process, self._items

        def pump() -> None:  # (a thread: smolagents' executors are called synchronously)
            try:
                for chunk in process.stdout:
                    for item in reader.feed(chunk):
                        items.put(item)
            except Exception as e:  # (the sandbox ended under it)
                items.put(("stray", f"[kernel output ended: {e}]\n"))
            finally:
                if reader.rest():
                    items.put(("stray", reader.rest()))
                items.put(None)

        threading.Thread(target=pump, name="hutch-smolagents-kernel", daemon=True).start()

    def _stop_kernel(self) -> None:
        try:
            if self._process.poll() is None:
                self._process.kill()
        except Exception:  # (it, or its sandbox, ended already)
            pass

    def run_code_raise_errors(self, code: str) -> CodeOutput:
        """Run ``code`` in the kernel; its output, or ``AgentError`` with the traceback."""
        with self._lock:
            if self.sandbox is None:
                raise AgentError("the hutch executor was cleaned up", self.logger)
            self._process.stdin.write(smolkernel.request(code))
            self._process.stdin.drain()
            stray: list[str] = []
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    item = self._items.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    item = ("timeout", None)
                if item is None or item[0] == "timeout":
                    why = "ended" if item is None else f"ran past {self.timeout:g} s"
                    self._stop_kernel()
                    self._start_kernel()
                    raise AgentError("".join(stray) + f"\nThe code's Python process {why}; it "
                                     "was restarted, and its variables are lost.", self.logger)
                if item[0] == "stray":
                    stray.append(item[1])
                    continue
                reply: dict[str, Any] = item[1]
                break
        logs = "".join(stray) + str(reply.get("logs") or "")
        if reply.get("final") is not None:
            value = self._deserialize_final_answer(str(reply["final"]), self.allow_pickle)
            return CodeOutput(output=value, logs=logs, is_final_answer=True)
        error = reply.get("error")
        if isinstance(error, dict):
            raise AgentError(f"{logs}\nExecuting code yielded an error:\n{error.get('name')}\n"
                             f"{error.get('value')}\n{error.get('traceback')}", self.logger)
        return CodeOutput(output=reply.get("output"), logs=logs, is_final_answer=False)

    def install_packages(self, additional_imports: list[str]) -> list[str]:
        """``pip install`` them with the kernel's Python (a separate exec: its output is
        logged, and a failure raises ``AgentError`` rather than half-passing)."""
        names = smolkernel.pip_names(additional_imports)
        if not names or self.sandbox is None:
            return names
        process = self.sandbox.exec(self.python, "-m", "pip", "install", "-q",
                                    "--disable-pip-version-check", *names, timeout=900)
        logs = process.stdout.read() + process.stderr.read()
        if process.wait() != 0:
            raise AgentError(f"pip install {' '.join(names)} failed:\n{logs}", self.logger)
        if logs:
            self.logger.log(logs)
        return names

    def cleanup(self) -> None:
        """Stop the kernel, and the sandbox unless it was given (``sandbox=``)."""
        sandbox, self.sandbox = self.sandbox, None
        if sandbox is None:
            return
        self._stop_kernel()
        if self._owns_sandbox:
            try:
                sandbox.terminate()
            except Exception as e:  # (ended already: nothing to clean)
                self.logger.log_error(f"Error during cleanup: {e}")

    def delete(self) -> None:
        """smolagents' other executors' name for :meth:`cleanup`."""
        self.cleanup()
