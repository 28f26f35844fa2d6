"""``hutch mcp``, driven by the ``mcp`` SDK's own client (from PyPI): over stdio (the
client spawns ``python -m hutch mcp``), over streamable HTTP on loopback with its bearer
token, and on a Unix socket."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.integration import scratch

COMMON = r"""
import json, os, queue, stat, subprocess, sys, threading, time

import anyio
import httpx2
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client


def data(result):
    if result.is_error:
        return {"error": result.content[0].text}
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


async def call(session, tool, **arguments):
    return data(await session.call_tool(tool, arguments))
"""

STDIO = COMMON + r"""
async def main():
    params = StdioServerParameters(command=sys.executable, args=["-m", "hutch", "mcp"],
                                   env=dict(os.environ))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        print("tools", sorted(t.name for t in (await session.list_tools()).tools))
        made = []
        for entrypoint in ("echo from the entrypoint; echo oops >&2; sleep 600", None, None):
            start = time.monotonic()
            made.append(await call(session, "create_sandbox", entrypoint=entrypoint))
            made[-1]["took"] = time.monotonic() - start
        print("TIMING create_sandbox " + " ".join("%.3f" % m["took"] for m in made))
        listed = await call(session, "list_sandboxes")
        ids = [s["sandbox_id"] for s in listed["sandboxes"]]
        print("created", made[1]["timeout_s"], made[1]["workdir"],
              all(m["sandbox_id"] in ids for m in made))
        first, sid, third = (m["sandbox_id"] for m in made)

        seen = []

        async def progress(value, total, message):
            seen.append(message or "")

        result = data(await session.call_tool("run_command", {
            "sandbox_id": sid,
            "command": "echo one; sleep 1; echo two >&2; pwd; exit 7"},
            progress_callback=progress))
        print("run_command", result["exit_code"], sorted(result["output"].split()),
              result["timed_out"])
        print("progress", "one" in "".join(seen), len(seen) >= 2)
        timed = await call(session, "run_command", sandbox_id=sid, command="sleep 30",
                           timeout_s=1)
        print("timeout", timed["exit_code"], timed["timed_out"])

        one = await call(session, "run_python", sandbox_id=sid,
                         code="import math\nx = 6 * 7\nprint('set', x)")
        two = await call(session, "run_python", sandbox_id=sid, code="print(x)\nmath.sqrt(x*x)")
        bad = await call(session, "run_python", sandbox_id=sid, code="1/0")
        still = await call(session, "run_python", sandbox_id=sid,
                           code="import subprocess; subprocess.run(['echo', 'child']); x")
        print("python", one["output"].strip(), two["output"].strip(), two["value"],
              "ZeroDivisionError" in bad["error"], still["output"].strip(), still["value"])
        slow = await call(session, "run_python", sandbox_id=sid,
                          code="import time; time.sleep(30)", timeout_s=1)
        fresh = await call(session, "run_python", sandbox_id=sid, code="'x' in dir()")
        print("python timeout", "state" in slow["error"] or "variables" in slow["error"],
              fresh["value"])

        wrote = await call(session, "write_file", sandbox_id=sid, path="/workspace/d/a.txt",
                           content="héllo\n")
        binary = await call(session, "write_file", sandbox_id=sid, path="/workspace/d/b.bin",
                            content="AAEC/w==", encoding="base64")
        read = await call(session, "read_file", sandbox_id=sid, path="/workspace/d/a.txt")
        readb = await call(session, "read_file", sandbox_id=sid, path="/workspace/d/b.bin")
        listing = await call(session, "list_files", sandbox_id=sid, path="/workspace/d")
        print("files", wrote["size"], binary["size"], read["content"].strip(),
              readb["encoding"], readb["content"],
              [(e["name"], e["type"], e["size"]) for e in listing["entries"]])

        errors = [
            await call(session, "run_command", sandbox_id="sb-nope", command="true"),
            await call(session, "run_command", sandbox_id="sb-" + "a" * 22, command="true"),
            await call(session, "read_file", sandbox_id=sid, path="relative/path"),
            await call(session, "read_file", sandbox_id=sid, path="/workspace/missing"),
            await call(session, "create_sandbox", timeout_s=10 ** 9),
            await call(session, "write_file", sandbox_id=sid, path="/x", content="%",
                       encoding="base64"),
        ]
        for error in errors:  # (the SDK puts "Error executing tool NAME: " first)
            print("error", error.get("error", "NO ERROR").split(": ", 1)[-1].split(":")[0][:60])

        logs = await session.read_resource(f"hutch://sandboxes/{first}/logs")
        text = logs.contents[0].text
        print("logs", "from the entrypoint" in text, "[stderr] oops" in text)

        for box in (sid, first, third):
            done = await call(session, "terminate_sandbox", sandbox_id=box)
            print("terminated", done["terminated"])
        gone = await call(session, "run_command", sandbox_id=sid, command="true")
        print("after", "has finished" in gone["error"] or "no sandbox" in gone["error"])


anyio.run(main)
"""

HTTP = COMMON + r"""
async def use(url, token=None, uds=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = httpx2.AsyncHTTPTransport(uds=uds) if uds else None
    async with httpx2.AsyncClient(headers=headers, transport=transport,
                                  timeout=httpx2.Timeout(30, read=300)) as http:
        async with streamable_http_client(url, http_client=http) as (read, write), \
                ClientSession(read, write) as session:
            await session.initialize()
            made = await call(session, "create_sandbox", timeout_s=120)
            ran = await call(session, "run_command", sandbox_id=made["sandbox_id"],
                             command="echo over http")
            await call(session, "terminate_sandbox", sandbox_id=made["sandbox_id"])
            return ran["output"].strip()


def start(*args, env=None):
    # the server, once it said where it serves (and its token, when it made one)
    server = subprocess.Popen([sys.executable, "-m", "hutch", "mcp", *args],
                              stderr=subprocess.PIPE, text=True, env=env or dict(os.environ))
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l) for l in server.stderr], daemon=True).start()
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            seen.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
        except queue.Empty:
            break
        serving = any("serving" in l for l in seen)
        if serving and ("--unix" in args or env or any("token" in l for l in seen)):
            return server, seen
    server.kill()
    raise SystemExit("the server did not start: " + "".join(seen))


async def main():
    server, lines = start("--http", "127.0.0.1:0")
    try:
        url = next(l for l in lines if "serving" in l).split()[-1]
        token = next(l for l in lines if "token" in l).split()[3]
        async with httpx2.AsyncClient() as http:
            for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"},
                            {"Authorization": token}):
                refused = await http.post(url, json={}, headers=headers)
                print("refused", refused.status_code)
        print("http", await use(url, token))
    finally:
        server.terminate()
        server.wait(30)
    print("stopped", server.returncode is not None)

    server, lines = start("--http", "localhost:0",
                          env={**os.environ, "HUTCH_MCP_TOKEN": "chosen-token-0123456789"})
    try:
        url = next(l for l in lines if "serving" in l).split()[-1]
        print("env token", not any("token" in l for l in lines),
              await use(url, "chosen-token-0123456789"))
    finally:
        server.terminate()
        server.wait(30)

    path = os.path.join(os.environ["SOCKET_DIR"], "mcp.sock")
    server, lines = start("--unix", path)
    try:
        print("unix mode", oct(stat.S_IMODE(os.stat(path).st_mode)))
        print("unix", await use("http://localhost/mcp", uds=path))
    finally:
        server.terminate()
        server.wait(30)
    print("unix removed", not os.path.exists(path))

    refused = subprocess.run([sys.executable, "-m", "hutch", "mcp", "--http", "0.0.0.0:0"],
                             capture_output=True, text=True, timeout=60)
    print("public", refused.returncode != 0, "loopback only" in refused.stderr)


anyio.run(main)
"""


def _drive(python: Path, source: str, tmp_path: Path) -> list[str]:
    done = scratch.drive(python, source, tmp_path,
                         env={**os.environ, "SOCKET_DIR": str(tmp_path)})
    print(done.stdout)  # (the TIMING lines: pytest -s shows them)
    return [line for line in done.stdout.splitlines() if not line.startswith("TIMING")]


def test_mcp_server_over_stdio(engine: dict[str, Any], tmp_path: Path) -> None:
    python = scratch.venv("mcp", ["mcp>=2.3,<3"], with_hutch=True)
    lines = _drive(python, STDIO, tmp_path)
    assert lines == [
        "tools ['create_sandbox', 'list_files', 'list_sandboxes', 'read_file', "
        "'run_command', 'run_python', 'terminate_sandbox', 'write_file']",
        "created 1800 /workspace True",
        "run_command 7 ['/workspace', 'one', 'two'] False",
        "progress True True",
        "timeout 124 True",
        "python set 42 42 42.0 True child 42",
        "python timeout True False",
        "files 7 4 héllo base64 AAEC/w== [('a.txt', 'file', 7), ('b.bin', 'file', 4)]",
        "error invalid sandbox id 'sb-nope'",
        "error no sandbox sb-aaaaaaaaaaaaaaaaaaaaaa",
        "error path must be absolute (a path in the sandbox such as /worksp",
        "error SandboxFilesystemNotFoundError",
        "error timeout_s must be a number of seconds above 0 and at most 86",
        "error content is not valid base64",
        "logs True True",
        *["terminated True"] * 3,
        "after True",
    ], lines


def test_mcp_server_over_http_with_a_token_and_on_a_unix_socket(
        engine: dict[str, Any], tmp_path: Path) -> None:
    python = scratch.venv("mcp", ["mcp>=2.3,<3"], with_hutch=True)
    lines = _drive(python, HTTP, tmp_path)
    assert lines == [
        "refused 401", "refused 401", "refused 401",
        "http over http",
        "stopped True",
        "env token True over http",
        "unix mode 0o600",
        "unix over http",
        "unix removed True",
        "public True True",
    ], lines
