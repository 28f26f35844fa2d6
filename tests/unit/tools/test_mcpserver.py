"""``hutch mcp``'s parts that need neither the ``mcp`` SDK nor an engine: argument checks,
the HTTP transports' token gate, loopback check and socket mode, ``run_python``'s answer,
and the missing-SDK message.
tests/integration/test_mcp_server.py drives the whole server with the SDK's own client."""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from hutch.sdk import pythonkernel
from hutch.tools import mcphttp, mcpserver
from hutch.tools.cli import main


@pytest.mark.parametrize("path", ["", "relative/x", "/a\0b", "/" + "x" * 5000, 3, None])
def test_paths_must_be_absolute_strings(path: Any) -> None:
    with pytest.raises(mcpserver.Refused):
        mcpserver.check_path(path)


def test_an_absolute_path_passes() -> None:
    assert mcpserver.check_path("/workspace/a b.txt") == "/workspace/a b.txt"


@pytest.mark.parametrize("value", [0, -1, 10**9, True, "5", float("nan")])
def test_timeouts_out_of_range_are_refused(value: Any) -> None:
    with pytest.raises(mcpserver.Refused, match="timeout_s must be"):
        mcpserver.check_timeout(value, 10, 100, "timeout_s")


def test_a_timeout_defaults_and_passes() -> None:
    assert mcpserver.check_timeout(None, 10, 100, "t") == 10
    assert mcpserver.check_timeout(2.5, 10, 100, "t") == 2.5


def test_sandbox_ids_are_checked_before_any_engine_call() -> None:
    boxes = object.__new__(mcpserver._Sandboxes)  # (no engine: get must refuse first)
    for bad in ("sb-short", "../../etc", "sb-" + "a" * 22 + "/x", 7):
        with pytest.raises(mcpserver.Refused, match="invalid sandbox id"):
            boxes.get(bad)


@pytest.mark.parametrize("spec", ["127.0.0.1:8080", "localhost:0", "[::1]:9", "127.1.2.3:1"])
def test_loopback_addresses_are_accepted(spec: str) -> None:
    host, port = mcphttp.loopback_address(spec)
    assert port in (8080, 0, 9, 1) and host in ("127.0.0.1", "::1", "127.1.2.3")


@pytest.mark.parametrize("spec", ["0.0.0.0:80", "10.0.0.1:80", "example.com:80", "[::]:1",
                                  "127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000"])
def test_other_addresses_are_refused(spec: str) -> None:
    with pytest.raises(SystemExit):
        mcphttp.loopback_address(spec)


def test_the_token_comes_from_the_environment_or_is_made(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HUTCH_MCP_TOKEN", raising=False)
    first, made = mcphttp.token_from_env()
    assert made and len(first) >= 32 and first != mcphttp.token_from_env()[0]
    monkeypatch.setenv("HUTCH_MCP_TOKEN", "a-chosen-token-of-some-length")
    assert mcphttp.token_from_env() == ("a-chosen-token-of-some-length", False)
    monkeypatch.setenv("HUTCH_MCP_TOKEN", "short")
    with pytest.raises(SystemExit, match="at least 16"):
        mcphttp.token_from_env()


def _request(app: Any, headers: list[tuple[bytes, bytes]]) -> tuple[int, list[str]]:
    sent: list[dict[str, Any]] = []
    reached: list[str] = []

    async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    gate = mcphttp.BearerGate(inner, "s3cret-token-s3cret")
    anyio.run(gate, {"type": "http", "path": "/mcp", "headers": headers}, receive, send)
    return sent[0]["status"], reached


def test_the_bearer_gate_passes_only_the_token() -> None:
    assert _request(None, [(b"authorization", b"Bearer s3cret-token-s3cret")]) == (200, ["/mcp"])
    for headers in ([], [(b"authorization", b"Bearer wrong")],
                    [(b"authorization", b"s3cret-token-s3cret")],
                    [(b"authorization", b"Bearer s3cret-token-s3cret ")]):
        assert _request(None, headers) == (401, [])


def test_the_unix_socket_is_private_and_a_stale_one_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "mcp.sock")
    sock = mcphttp.unix_listener(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(SystemExit, match="already serves"):
        mcphttp.unix_listener(path)
    sock.close()  # (the file stays: stale)
    mcphttp.unix_listener(path).close()
    (tmp_path / "plain").write_text("")
    with pytest.raises(SystemExit, match="not a socket"):
        mcphttp.unix_listener(str(tmp_path / "plain"))


def test_run_python_answers_with_the_traceback_as_text() -> None:
    """The kernel's reply as the tool returns it (the kernel itself:
    tests/unit/sdk/test_pythonkernel.py)."""
    error = pythonkernel.CodeError("ZeroDivisionError", "division by zero", "Traceback ...")
    reply = pythonkernel.KernelReply(output="before\n", truncated=False, value=None,
                                     error=error, final=None)
    assert mcpserver.python_result(reply) == {
        "output": "before\n", "value": None, "error": "Traceback ...", "truncated": False}
    reply = dataclasses.replace(reply, error=None, value="42", truncated=True)
    assert mcpserver.python_result(reply) == {
        "output": "before\n", "value": "42", "error": None, "truncated": True}


def test_without_the_sdk_hutch_mcp_names_the_extra(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mcp", None)  # (import mcp now raises ImportError)
    monkeypatch.setitem(sys.modules, "mcp.server", None)
    monkeypatch.setitem(sys.modules, "mcp.server.mcpserver", None)
    assert main(["mcp"]) == 1
    assert 'pip install "hutch[mcp]"' in capsys.readouterr().err


def test_import_hutch_and_its_cli_import_no_mcp() -> None:
    code = ("import sys, hutch, hutch.tools.cli; hutch.Sandbox; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('mcp', 'uvicorn', 'starlette', 'deepagents')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_the_mcp_subcommand_parses() -> None:
    from hutch.tools.cli import parser

    args = parser().parse_args(["mcp", "--http", "127.0.0.1:0", "--default-timeout", "60"])
    assert (args.http, args.unix, args.default_timeout, args.max_timeout) == (
        "127.0.0.1:0", None, 60, 86400)
    with pytest.raises(SystemExit):
        parser().parse_args(["mcp", "--http", "127.0.0.1:0", "--unix", "/tmp/x"])

