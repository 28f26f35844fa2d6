"""Memory snapshots (hutch/sdk/memorysnapshot.py): Modal's calls exist with its signatures
and refuse with the reason measured for the engine they would use; no engine runs
(:mod:`tests.unit.sdk.offline`: the engine's ``GET /v1/engine`` answer is a stand-in)."""

from __future__ import annotations

import errno
import inspect
import os
from pathlib import Path
from typing import Any

import anyio
import pytest

from hutch.api import urls
from hutch.exception import ClientClosed, InvalidError
from hutch.sdk import memorysnapshot, transport
from hutch.sdk.sandbox import Sandbox
from tests.unit.sdk.offline import RequestSent, a_sandbox, offline_sdk  # noqa: F401 - autouse

ROOTLESS = {"userns_mode": "subuid", "runtime": "crun"}
ROOT = {"userns_mode": "root", "runtime": "crun"}
CAP_SYS_ADMIN = 21


@pytest.fixture
def engine_info(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What ``GET /v1/engine`` answers (rootless unless a test changes it); every other
    request is caught (RequestSent), so a refusal is seen to send nothing else."""
    info = dict(ROOTLESS)

    async def request(self: Any, method: str, path: str, **kwargs: Any) -> Any:
        if (method, path) == ("GET", urls.ENGINE):
            return info
        raise RequestSent(method, path, kwargs.get("json_body"), kwargs.get("params"))

    monkeypatch.setattr(transport.EngineClient, "request", request)
    monkeypatch.setattr(memorysnapshot.os, "geteuid", lambda: 1000)  # the SDK as a user
    monkeypatch.setattr(memorysnapshot, "suspend_seccomp_errno", lambda: errno.EPERM)
    return info


def _parameters(fn: Any) -> list[tuple[str, str, bool]]:
    return [(p.name, p.kind.name, p.default is not inspect.Parameter.empty)
            for p in inspect.signature(fn).parameters.values() if p.name != "self"]


def test_signatures_are_modals() -> None:
    """Modal 1.6.4: ``_experimental_snapshot(self)``, and the static
    ``_experimental_from_snapshot(snapshot, client=None, *, name=<keep>)``."""
    assert _parameters(Sandbox._experimental_snapshot.__wrapped__) == []  # type: ignore[attr-defined]
    static = inspect.getattr_static(Sandbox, "_experimental_from_snapshot")
    assert _parameters(static.__wrapped__) == [
        ("snapshot", "POSITIONAL_OR_KEYWORD", False), ("client", "POSITIONAL_OR_KEYWORD", True),
        ("name", "KEYWORD_ONLY", True)]
    assert callable(Sandbox._experimental_from_snapshot.aio)


def test_a_rootless_engine_gets_the_kernels_answer(engine_info: dict[str, Any]) -> None:
    with pytest.raises(InvalidError) as refused:
        a_sandbox()._experimental_snapshot()
    message = str(refused.value)
    assert message.startswith("Sandbox._experimental_snapshot: memory snapshots are not "
                              "available: the engine runs rootless")
    assert "PTRACE_SEIZE with PTRACE_O_SUSPEND_SECCOMP -> EPERM" in message
    assert "CAP_SYS_ADMIN in the initial user namespace" in message
    assert os.uname().release in message and memorysnapshot.DOC in message


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_async_face_refuses_alike(engine_info: dict[str, Any], backend: str) -> None:
    async def calls() -> None:  # the probe runs in a worker thread here, not a direct call
        with pytest.raises(InvalidError, match="PTRACE_O_SUSPEND_SECCOMP -> EPERM"):
            await a_sandbox()._experimental_snapshot.aio()
        with pytest.raises(InvalidError,
                           match=r"^Sandbox\._experimental_from_snapshot: .* rootless"):
            await Sandbox._experimental_from_snapshot.aio(object())

    anyio.run(calls, backend=backend)


def test_restoring_and_creating_refuse_with_the_same_reason(
        engine_info: dict[str, Any]) -> None:
    with pytest.raises(InvalidError, match=r"^Sandbox\._experimental_from_snapshot: .*EPERM"):
        Sandbox._experimental_from_snapshot(object(), name="restored")
    # the create is refused before anything is sent (no RequestSent for POST /v1/sandboxes)
    with pytest.raises(InvalidError, match=r"^Sandbox\.create: `_experimental_enable_snapshot`: "
                                           r"memory snapshots .* rootless.*EPERM"):
        Sandbox.create(_experimental_enable_snapshot=True)
    with pytest.raises(RequestSent, match="POST /v1/sandboxes"):  # off: create goes on
        Sandbox.create(_experimental_enable_snapshot=False)


def test_arguments_and_detached_sandboxes_are_checked_first(
        engine_info: dict[str, Any]) -> None:
    with pytest.raises(InvalidError, match="Invalid Sandbox name"):
        Sandbox._experimental_from_snapshot(object(), name="a b")
    with pytest.raises(InvalidError, match="`client` is not supported"):
        Sandbox._experimental_from_snapshot(object(), client=object())
    sandbox = a_sandbox()
    sandbox.detach()
    with pytest.raises(ClientClosed):
        sandbox._experimental_snapshot()


def test_a_rootless_engine_reason_holds_where_the_probe_could_not_run() -> None:
    reason = memorysnapshot.refusal_reason(ROOTLESS, measure=lambda: None)
    assert "not measured from this process" in reason and "seccomp" in reason


def test_the_probe_answers_what_the_kernel_allows_this_process() -> None:
    """``PTRACE_O_SUSPEND_SECCOMP`` needs CAP_SYS_ADMIN in the initial user namespace."""
    status = Path("/proc/self/status").read_text()
    effective = int(next(line.split()[1] for line in status.splitlines()
                         if line.startswith("CapEff:")), 16)
    initial = Path("/proc/self/uid_map").read_text().split() == ["0", "0", "4294967295"]
    expected = 0 if initial and effective >> CAP_SYS_ADMIN & 1 else errno.EPERM
    assert memorysnapshot.suspend_seccomp_errno() == expected


class FakeHost:
    """Programs on a root engine's host: which exist, and what each prints."""

    def __init__(self, found: dict[str, str]) -> None:
        self.found = found
        self.ran: list[list[str]] = []

    def find(self, name: str) -> str | None:
        return f"/usr/sbin/{name}" if name in self.found else None

    def run(self, argv: list[str]) -> tuple[int, str]:
        self.ran.append(argv)
        name = Path(argv[0]).name
        if argv[1:] == ["check"]:
            failing = "Error" in self.found["criu check"]
            return (1 if failing else 0), self.found["criu check"]
        return 0, self.found[name]


def _root_reason(found: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(memorysnapshot.os, "geteuid", lambda: 0)
    host = FakeHost(found)
    return memorysnapshot.refusal_reason(ROOT, run=host.run, find=host.find)


CRUN_CRIU = "crun version 1.21\n+SYSTEMD +SELINUX +CAP +SECCOMP +CRIU +YAJL\n"
CRUN_NO_CRIU = "crun version 1.8.1\n+SYSTEMD +SELINUX +APPARMOR +CAP +SECCOMP +EBPF +YAJL\n"


@pytest.mark.parametrize(("found", "reason"), [
    ({}, "criu is not installed (Debian: apt-get install criu"),
    ({"criu": "Version: 3.17.1\n"}, "criu 3.17 is too old for this kernel"),
    ({"criu": "Version: 4.1.1\n", "criu check": "Error (criu/mount.c:381): mnt: No parent"},
     "`criu check` fails on this host: Error (criu/mount.c:381)"),
    ({"criu": "Version: 4.1.1\n", "criu check": "Looks good.", "crun": CRUN_NO_CRIU},
     "crun version 1.8.1 is built without CRIU"),
    ({"criu": "Version: 4.1.1\n", "criu check": "Looks good.", "crun": CRUN_CRIU},
     "but this version of hutch does not checkpoint sandboxes"),
])
def test_a_root_engine_is_told_the_state_of_its_host(
        found: dict[str, str], reason: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert reason in _root_reason(found, monkeypatch)


def test_a_root_engine_is_not_told_the_kernel_forbids_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    reason = _root_reason({"criu": "Version: 4.1.1\n", "criu check": "Looks good.",
                           "crun": CRUN_CRIU}, monkeypatch)
    assert "rootless" not in reason and "CAP_SYS_ADMIN" not in reason
