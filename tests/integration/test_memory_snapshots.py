"""Memory snapshots against a real rootless engine: refused with the reason measured on
this host (docs/limits.md, "Memory snapshots"), with the signatures of Modal's client."""

from __future__ import annotations

import inspect
import json
import subprocess
from typing import Any

import pytest

from hutch.exception import InvalidError
from tests.integration import scratch

#: Print the parameters of Modal's two calls, as (name, kind, has a default).
_MODAL_SIGNATURES = """
import inspect, json, modal
def params(fn):
    return [[p.name, p.kind.name, p.default is not inspect.Parameter.empty]
            for p in inspect.signature(fn).parameters.values() if p.name != "self"]
print(json.dumps([params(modal.Sandbox._experimental_snapshot),
                  params(modal.Sandbox._experimental_from_snapshot)]))
"""


def _params(fn: Any) -> list[list[Any]]:
    return [[p.name, p.kind.name, p.default is not inspect.Parameter.empty]
            for p in inspect.signature(fn).parameters.values() if p.name != "self"]


def test_the_sandbox_runs_under_seccomp_and_snapshots_are_refused_for_it(sandbox: Any) -> None:
    """The reason's premise, read inside the sandbox (its processes run under a filter),
    then the refusal, which names what the kernel answered just now."""
    status = sandbox.exec("grep", "^Seccomp:", "/proc/self/status").stdout.read()
    assert status.split() == ["Seccomp:", "2"]  # SECCOMP_MODE_FILTER
    with pytest.raises(InvalidError) as refused:
        sandbox._experimental_snapshot()
    message = str(refused.value)
    assert "the engine runs rootless" in message
    assert "PTRACE_SEIZE with PTRACE_O_SUSPEND_SECCOMP -> EPERM" in message
    assert 'docs/limits.md, "Memory snapshots"' in message
    assert sandbox.poll() is None  # the sandbox runs on, untouched


def test_create_and_restore_are_refused_alike(engine: dict[str, Any]) -> None:
    import hutch

    for call in (lambda: hutch.Sandbox.create(_experimental_enable_snapshot=True),
                 lambda: hutch.Sandbox._experimental_from_snapshot(object())):
        with pytest.raises(InvalidError, match=r"rootless.*-> EPERM"):
            call()


def test_signatures_match_modals_client() -> None:
    import hutch

    python = scratch.venv("modal-client", ["modal"])
    done = subprocess.run([str(python), "-c", _MODAL_SIGNATURES], capture_output=True,
                          text=True, timeout=300, cwd="/")
    assert done.returncode == 0, done.stderr
    snapshot, restore = json.loads(done.stdout)
    assert _params(hutch.Sandbox._experimental_snapshot.__wrapped__) == snapshot
    static = inspect.getattr_static(hutch.Sandbox, "_experimental_from_snapshot")
    assert _params(static.__wrapped__) == restore
