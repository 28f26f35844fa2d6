"""The Deep Agents backend's own logic (hutch.integrations.langchain) against a stand-in
sandbox: error mapping per file, output cap, timeouts.  Without ``deepagents`` installed its
three protocol names are stood in for too; tests/integration/test_integration_langchain.py
drives the real framework on a real engine."""

from __future__ import annotations

import dataclasses
import importlib
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest

from hutch.exception import (
    SandboxFilesystemBusyError,
    SandboxFilesystemIsADirectoryError,
    SandboxFilesystemNotFoundError,
)
from hutch.sdk.process import EXEC_TIMEOUT_RETURNCODE
from hutch.sdk.sandbox import Sandbox


def _stand_ins() -> dict[str, types.ModuleType]:
    @dataclasses.dataclass
    class ExecuteResponse:
        output: str
        exit_code: int | None = None
        truncated: bool = False

    @dataclasses.dataclass
    class FileDownloadResponse:
        path: str
        content: bytes | None = None
        error: str | None = None

    @dataclasses.dataclass
    class FileUploadResponse:
        path: str
        error: str | None = None

    protocol = types.ModuleType("deepagents.backends.protocol")
    protocol.ExecuteResponse = ExecuteResponse  # type: ignore[attr-defined]
    protocol.FileDownloadResponse = FileDownloadResponse  # type: ignore[attr-defined]
    protocol.FileUploadResponse = FileUploadResponse  # type: ignore[attr-defined]
    sandbox = types.ModuleType("deepagents.backends.sandbox")
    sandbox.BaseSandbox = type("BaseSandbox", (), {})  # type: ignore[attr-defined]
    return {"deepagents": types.ModuleType("deepagents"),
            "deepagents.backends": types.ModuleType("deepagents.backends"),
            "deepagents.backends.protocol": protocol, "deepagents.backends.sandbox": sandbox}


@pytest.fixture
def lc(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    try:
        importlib.import_module("deepagents.backends.sandbox")
    except ImportError:
        for name, module in _stand_ins().items():
            monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "hutch.integrations.langchain", raising=False)
    yield importlib.import_module("hutch.integrations.langchain")
    sys.modules.pop("hutch.integrations.langchain", None)


class _Files:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {"/w/a.txt": b"A", "/w/busy": b""}

    def write_bytes(self, data: bytes, path: str) -> None:
        if path.startswith("/ro/"):
            raise PermissionError(13, "Permission denied")
        if path.startswith("/w/a.txt/"):
            raise NotADirectoryError(20, "Not a directory")
        self.files[path] = data

    def read_bytes(self, path: str) -> bytes:
        if path == "/w":
            raise SandboxFilesystemIsADirectoryError("Is a directory")
        if path == "/w/busy":
            raise SandboxFilesystemBusyError("leased")
        if path not in self.files:
            raise SandboxFilesystemNotFoundError("No such file or directory")
        return self.files[path]


class _Proc:
    def __init__(self, chunks: list[bytes], code: int) -> None:
        self.chunks, self.code = chunks, code
        self.stdin = types.SimpleNamespace(write_eof=lambda: None, drain=lambda: None)

    def events(self) -> Iterator[tuple[int, bytes]]:
        yield from ((1, c) for c in self.chunks)

    def wait(self) -> int:
        return self.code


class _Box(Sandbox):
    def __init__(self, chunks: list[bytes] | None = None, code: int = 0) -> None:
        super().__init__({"sandbox_id": "sb-" + "a" * 22})
        self.files = _Files()
        self.ran: list[tuple[tuple[str, ...], dict[str, Any]]] = []
        self.output = (chunks or [], code)

    @property
    def filesystem(self) -> Any:
        return self.files

    def exec(self, *args: str, **kwargs: Any) -> Any:  # type: ignore[override]
        self.ran.append((args, kwargs))
        return _Proc(*self.output)


def test_uploads_and_downloads_fail_per_file_with_the_protocols_errors(lc: Any) -> None:
    backend = lc.HutchSandbox(sandbox=_Box())
    up = backend.upload_files([("/w/new", b"x"), ("rel", b"x"), ("/ro/f", b"x"),
                               ("/w/a.txt/c", b"x"), ("/w/\0", b"x")])
    assert [r.error for r in up] == [None, "invalid_path", "permission_denied",
                                     "invalid_path", "invalid_path"]
    down = backend.download_files(["/w/new", "/w/a.txt", "/w/none", "/w", "/w/busy", "x"])
    assert [r.content for r in down][:2] == [b"x", b"A"]
    assert [r.error for r in down] == [None, None, "file_not_found", "is_directory",
                                       "SandboxFilesystemBusyError: leased", "invalid_path"]
    assert backend.id == "sb-" + "a" * 22


def test_execute_runs_the_command_as_a_shell_argument(lc: Any) -> None:
    box = _Box([b"hello ", b"w\xc3", b"\xa9rld\n"], 3)
    result = lc.HutchSandbox(sandbox=box, default_timeout=7).execute("echo 'it''s' $HOME")
    assert (result.output, result.exit_code, result.truncated) == ("hello w\u00e9rld\n", 3, False)
    args, kwargs = box.ran[0]
    assert args[:2] == ("sh", "-c") and args[3] == "echo 'it''s' $HOME"  # ($0: never parsed)
    assert kwargs["timeout"] == 7 and kwargs["text"] is False


def test_execute_caps_its_output_and_says_so(lc: Any) -> None:
    half = b"a" * (lc.MAX_OUTPUT_BYTES // 2)
    exact = lc.HutchSandbox(sandbox=_Box([half, half])).execute("x")
    assert len(exact.output) == lc.MAX_OUTPUT_BYTES and not exact.truncated
    over = lc.HutchSandbox(sandbox=_Box([half, half, b"b"])).execute("x")
    assert len(over.output) == lc.MAX_OUTPUT_BYTES and over.truncated


def test_a_timed_out_command_answers_124(lc: Any) -> None:
    box = _Box([b"partial\n"], EXEC_TIMEOUT_RETURNCODE)
    result = lc.HutchSandbox(sandbox=box).execute("sleep 9", timeout=2)
    assert result.exit_code == 124 and result.output.startswith("partial\n")
    assert "timed out after 2 seconds" in result.output
    lc.HutchSandbox(sandbox=box).execute("x", timeout=0)
    assert box.ran[-1][1]["timeout"] is None  # (0: no timeout)
    with pytest.raises(ValueError):
        lc.HutchSandbox(sandbox=box).execute("x", timeout=-1)


def test_the_backend_wraps_only_hutch_sandboxes(lc: Any) -> None:
    with pytest.raises(TypeError, match=r"hutch\.Sandbox"):
        lc.HutchSandbox(sandbox=object())
    with pytest.raises(ValueError):
        lc.HutchSandbox(sandbox=_Box(), default_timeout=0)


def test_the_provider_is_registered_for_deepagents_code() -> None:
    """pyproject.toml's entry point names the provider class by its importable path."""
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[3] / "pyproject.toml")
                            .read_text())["project"]
    target = project["entry-points"]["deepagents_code.sandbox_providers"]["hutch"]
    assert target == "hutch.integrations.langchain:HutchProvider"
    assert project["optional-dependencies"]["langchain"]
    assert any(dep.startswith("mcp>=2") for dep in project["optional-dependencies"]["mcp"])
