"""Memory snapshots against a real rootless engine: the engine measures, in its own user
namespace, that it cannot checkpoint (``GET /v1/engine/checkpoint``: the kernel answers its
PTRACE_O_SUSPEND_SECCOMP with EPERM), and the SDK refuses with that reason word for word
(docs/limits.md, "Memory snapshots"), with the signatures of Modal's client."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
from typing import Any

import httpx
import pytest

from hutch.api import paths, urls
from hutch.api.enginemodels import CheckpointInfo
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


def _engine_says() -> CheckpointInfo:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(paths.socket_path())),
                      base_url="http://hutch", timeout=60) as http:
        answer = http.get(urls.ENGINE_CHECKPOINT)
    assert answer.status_code == 200, answer.text
    return CheckpointInfo.model_validate(answer.json())


def test_the_engine_measures_that_its_user_namespace_cannot_suspend_seccomp(
        engine: dict[str, Any]) -> None:
    """The verdict comes from the engine's own namespace, whoever asks (the test runs as an
    unprivileged user; the engine's uid 0 is that user on the host)."""
    said = _engine_says()
    assert said.supported is False
    assert said.reason.startswith("the engine runs rootless (in a user namespace of its own, "
                                  f"its uid 0 being uid {os.getuid()} on the host)")
    assert "PTRACE_SEIZE with PTRACE_O_SUSPEND_SECCOMP -> EPERM" in said.reason
    assert f"Linux {os.uname().release}" in said.reason
    assert _engine_says().reason == said.reason  # asked again: the same answer


def test_the_sandbox_runs_under_seccomp_and_snapshots_are_refused_for_it(sandbox: Any) -> None:
    """The reason's premise, read inside the sandbox (its processes run under a filter),
    then the refusal, which relays the engine's measured reason word for word."""
    status = sandbox.exec("grep", "^Seccomp:", "/proc/self/status").stdout.read()
    assert status.split() == ["Seccomp:", "2"]  # SECCOMP_MODE_FILTER
    with pytest.raises(InvalidError) as refused:
        sandbox._experimental_snapshot()
    message = str(refused.value)
    assert "the engine runs rootless" in message
    assert "PTRACE_SEIZE with PTRACE_O_SUSPEND_SECCOMP -> EPERM" in message
    assert 'docs/limits.md, "Memory snapshots"' in message
    assert message == ("Sandbox._experimental_snapshot: memory snapshots are not available: "
                       f'{_engine_says().reason} (docs/limits.md, "Memory snapshots")')
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
