"""The LangChain Deep Agents backend (hutch.integrations.langchain), with ``deepagents``
from PyPI, driven through the framework's own API without a language model: its
``FilesystemMiddleware`` tools (execute, write_file, read_file, edit_file, ls, grep, glob)
called as an agent's tool node calls them, its ``BaseSandbox`` file operations, and the
``deepagents_code.sandbox_providers`` entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.integration import scratch

DRIVER = r"""
import time
from importlib.metadata import entry_points

from deepagents.backends.protocol import SandboxBackendProtocol
from deepagents.middleware.filesystem import FilesystemMiddleware
from langchain.tools import ToolRuntime

from hutch.integrations.langchain import HutchSandbox

start = time.monotonic()
backend = HutchSandbox.create(timeout=300)
print("TIMING first sandbox %.3f s" % (time.monotonic() - start))
with backend:
    print("protocol", isinstance(backend, SandboxBackendProtocol), backend.id.startswith("sb-"))
    tools = {t.name: t for t in FilesystemMiddleware(backend=backend).tools}
    runtime = ToolRuntime(state={"messages": [], "files": {}}, context=None, config={},
                          stream_writer=lambda *_: None, tool_call_id="call-1", store=None)

    def tool(name, **kwargs):
        return tools[name].func(runtime=runtime, **kwargs)

    result = tool("execute", command="echo out; echo err >&2; pwd; exit 3")
    print("execute", result.artifact["exit_code"], "out" in result.content,
          "err" in result.content, "/workspace" in result.content)
    print("bash", backend.execute("echo $BASH_VERSION | cut -c1").output.strip().isdigit())
    timed = backend.execute("sleep 30", timeout=1)
    print("timeout", timed.exit_code, "timed out after 1 seconds" in timed.output)
    print("write", tool("write_file", file_path="/workspace/src/a.py",
                        content="x = 1\nprint('hello')\n").content)
    print("read", tool("read_file", file_path="/workspace/src/a.py").content.splitlines()[1:])
    print("edit", tool("edit_file", file_path="/workspace/src/a.py", old_string="x = 1",
                       new_string="x = 42").content.startswith("Successfully replaced"))
    print("ls", tool("ls", path="/workspace/src").content)
    print("grep", tool("grep", pattern="x = 42", path="/workspace").content)
    print("glob", tool("glob", pattern="**/*.py", path="/workspace").content)
    print("run", backend.execute("python3 /workspace/src/a.py").output.strip())

    up = backend.upload_files([("/workspace/bin.dat", bytes(range(256))),
                               ("relative.txt", b"x"),
                               ("/workspace/src/a.py/child", b"x")])
    print("upload", [r.error for r in up])
    down = backend.download_files(["/workspace/bin.dat", "/workspace/missing",
                                   "/workspace/src", "relative"])
    print("download", down[0].content == bytes(range(256)), [r.error for r in down])
    big = backend.execute("head -c 3000000 /dev/zero | tr '\\0' a")
    print("big", big.truncated, len(big.output))
print("closed", backend.sandbox.poll() is not None)

provider_class = entry_points(group="deepagents_code.sandbox_providers")["hutch"].load()
provider = provider_class()
times = []
for _ in range(3):
    start = time.monotonic()
    sandbox = provider.get_or_create(pool_size=2, timeout=120)
    times.append(time.monotonic() - start)
    again = provider.get_or_create(sandbox_id=sandbox.id)
    print("provider", again.execute("echo ready").output.strip(), again.id == sandbox.id)
    provider.delete(sandbox_id=sandbox.id)
print("TIMING provider sandboxes (warm pool of 2) " + " ".join("%.3f" % t for t in times))
"""


def test_deepagents_backend_through_its_filesystem_tools(engine: dict[str, Any],
                                                        tmp_path: Path) -> None:
    python = scratch.venv("deepagents", ["deepagents"], with_hutch=True)
    done = scratch.drive(python, DRIVER, tmp_path)
    print(done.stdout)  # (the TIMING lines: pytest -s shows them)
    lines = [line for line in done.stdout.splitlines() if not line.startswith("TIMING")]
    assert lines == [
        "protocol True True",
        "execute 3 True True True",
        "bash True",
        "timeout 124 True",
        "write Updated file /workspace/src/a.py",
        "read ['x = 1', \"print('hello')\"]",
        "edit True",
        "ls ['/workspace/src/a.py']",
        "grep /workspace/src/a.py",
        "glob ['/workspace/src/a.py']",
        "run hello",
        "upload [None, 'invalid_path', 'invalid_path']",
        "download True [None, 'file_not_found', 'is_directory', 'invalid_path']",
        "big True 1048576",
        "closed True",
        *["provider ready True"] * 3,
    ], done.stdout
