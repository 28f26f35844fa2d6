"""The engine run by real root: same API and isolation, no user namespace."""

from __future__ import annotations

import os
from typing import Any

import pytest

import hutch
from hutch.exception import SandboxTimeoutError


def test_engine_runs_without_a_user_namespace(root_engine: dict[str, Any]) -> None:
    assert root_engine["userns_mode"] == "root"
    pid = root_engine["pid"]
    assert os.readlink(f"/proc/{pid}/ns/user") == os.readlink("/proc/self/ns/user")
    assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")


def test_create_exec_terminate_as_root(root_engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create(env={"X": "1"}, workdir="/work", timeout=60)
    p = sb.exec("python3", "-c", "import os; print(os.environ['X'], os.getcwd(), os.getuid())")
    assert p.stdout.read() == "1 /work 0\n"
    assert p.wait() == 0
    status = sb.exec("grep", "-E", "^(NoNewPrivs|CapEff)", "/proc/self/status").stdout.read()
    assert "NoNewPrivs:\t1" in status
    assert "CapEff:\t00000000800405fb" in status
    assert sb.exec("hostname").stdout.read().strip() == sb.object_id
    assert sb.exec("mount", "-t", "tmpfs", "t", "/mnt").wait() != 0
    assert sb.exec("sh", "-c", "rm -rf /usr/share/doc && mkdir /usr/share/doc").wait() == 0
    sb.terminate()
    assert sb.returncode == 137


def test_entrypoint_and_timeout_as_root(root_engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create("sh", "-c", "echo hi; exit 9", timeout=60)
    sb.wait()
    assert (sb.returncode, sb.stdout.read()) == (9, "hi\n")
    slow = hutch.Sandbox.create("sleep", "100", timeout=1)
    with pytest.raises(SandboxTimeoutError):
        slow.wait()
    assert slow.returncode == 124
