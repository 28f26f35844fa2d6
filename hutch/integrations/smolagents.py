"""hutch as smolagents' code executor: ``CodeAgent(tools, model, executor=HutchExecutor())``.

smolagents picks its remote executors from a fixed table (``executor_type`` is one of
``local``, ``blaxel``, ``e2b``, ``modal``, ``docker``; it reads no entry points), so hutch's
is passed as an object; it is also registered under the entry point group
``smolagents.executors`` as ``hutch``, for a smolagents that comes to read one.  It
implements ``RemotePythonExecutor`` as smolagents' E2B, Docker and Modal executors do: the
agent's code runs in a long-lived Python process in a hutch sandbox, so variables, imports
and functions stay between steps; tools are sent as their source (``send_tools``) and
variables serialized (``send_variables``), both by smolagents' own code; ``final_answer``
raises the ``FinalAnswerException`` that ends the run.

Why not Jupyter as their Docker and Modal executors: a kernel gateway needs a package
install, a port and an HTTP server to wait for; hutch's exec already gives a process with a
stdin and a stdout, so the SDK's small kernel on them (:mod:`hutch.sdk.pythonkernel`, the
one ``hutch mcp``'s ``run_python`` uses too) is ready the moment the sandbox is (0.06 s for
an executor, 21-23 ms a code action), needs only ``python3`` in the image, and captures what
the code's child processes and C extensions write as well as what it prints.
"""

from __future__ import annotations

from typing import Any

from smolagents.local_python_executor import CodeOutput
from smolagents.monitoring import AgentLogger, LogLevel
from smolagents.remote_executors import RemotePythonExecutor
from smolagents.utils import AgentError

import hutch
from hutch.sdk.pythonkernel import MAX_OUTPUT, KernelLost, PythonKernel, pip_names

__all__ = ["HutchExecutor"]


class HutchExecutor(RemotePythonExecutor):  # type: ignore[misc]
    """Runs a ``CodeAgent``'s code in a hutch sandbox.

    ``additional_imports``: packages to ``pip install`` into the sandbox first (as the other
    remote executors do; an image with them is faster: ``image=``).  ``logger``: smolagents'
    ``AgentLogger`` (a default one if left out).  ``image``: default
    ``Image.debian_slim()``; ``sandbox``: a running sandbox to use (left running at
    ``cleanup``); ``create_kwargs``: more ``Sandbox.create`` arguments (``timeout``,
    ``block_network``, ``cpu``, ``memory``, ...).  ``timeout``: seconds one code action may
    run; past it the kernel is killed (its variables are lost; the next action starts
    a fresh one) and the step fails.
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
        self._owns_sandbox = sandbox is None
        if sandbox is None:
            options: dict[str, Any] = {"timeout": 3600, **(create_kwargs or {})}
            options.setdefault("app", hutch.App.lookup(app_name, create_if_missing=True))
            options.setdefault("image", image or hutch.Image.debian_slim())
            sandbox = hutch.Sandbox.create(**options)
        self.sandbox: hutch.Sandbox | None = sandbox
        self._kernel = PythonKernel(sandbox, python=python, filename="<code>",
                                    final_exception=self.FINAL_ANSWER_EXCEPTION)
        self.installed_packages = self.install_packages(self.additional_imports)
        self.logger.log(f"hutch sandbox {sandbox.object_id} is running", level=LogLevel.INFO)

    def run_code_raise_errors(self, code: str) -> CodeOutput:
        """Run ``code`` in the kernel; its output, or ``AgentError`` with the traceback."""
        if self.sandbox is None:
            raise AgentError("the hutch executor was cleaned up", self.logger)
        try:
            reply = self._kernel.run(code, self.timeout)
        except KernelLost as e:
            raise AgentError(f"Code execution failed: {e}.", self.logger) from None
        logs = reply.output
        if reply.truncated:
            logs += f"\n[output cut here: a code action returns at most {MAX_OUTPUT} bytes]"
        if reply.final is not None:
            value = self._deserialize_final_answer(str(reply.final.value), self.allow_pickle)
            return CodeOutput(output=value, logs=logs, is_final_answer=True)
        if reply.error is not None:
            raise AgentError(f"{logs}\nExecuting code yielded an error:\n{reply.error.name}\n"
                             f"{reply.error.value}\n{reply.error.traceback}", self.logger)
        return CodeOutput(output=reply.value, logs=logs, is_final_answer=False)

    def install_packages(self, additional_imports: list[str]) -> list[str]:
        """``pip install`` them with the kernel's Python (a separate exec: its output is
        logged, and a failure raises ``AgentError`` rather than half-passing)."""
        names = pip_names(additional_imports)
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
        self._kernel.close()
        if self._owns_sandbox:
            try:
                sandbox.terminate()
            except Exception as e:  # (ended already: nothing to clean)
                self.logger.log_error(f"Error during cleanup: {e}")

    def delete(self) -> None:
        """smolagents' other executors' name for :meth:`cleanup`."""
        self.cleanup()
