"""Sandbox lifecycle against the real engine: create, entrypoints, exit codes, timeouts,
terminate, names, tags, lookups and argument errors."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

import hutch
from hutch.api import paths
from hutch.exception import (
    AlreadyExistsError,
    ConflictError,
    InvalidError,
    NotFoundError,
    SandboxTerminatedError,
    SandboxTimeoutError,
)
from hutch.sdk.transport import events_blocking, request_blocking
from tests.helpers import wait_for


def test_entrypoint_output_and_exit_code(engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create(
        "sh", "-c", "echo out; echo err >&2; exit 7", timeout=60)
    sb.wait()
    assert sb.returncode == 7
    assert sb.stdout.read() == "out\n"
    assert sb.stderr.read() == "err\n"
    assert sb.info()["exit_reason"] == "exited"


def test_env_and_workdir_created_if_missing(engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create("sh", "-c", 'echo "$GREETING $(pwd)"', env={"GREETING": "hi"},
                              workdir="/srv/new/dir", timeout=60)
    sb.wait()
    assert sb.stdout.read() == "hi /srv/new/dir\n"
    assert sb.returncode == 0


def test_sandbox_timeout_gives_124(engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create("sleep", "600", timeout=1)
    with pytest.raises(SandboxTimeoutError):
        sb.wait()
    assert sb.returncode == 124
    with pytest.raises(SandboxTimeoutError):  # as in Modal, whatever raise_on_termination
        sb.wait(raise_on_termination=False)


def test_terminate_gives_137_and_frees_the_name(engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create(name="to-terminate", timeout=60)
    sb.terminate()
    assert sb.returncode == 137
    with pytest.raises(SandboxTerminatedError):
        sb.wait()
    again = hutch.Sandbox.create(name="to-terminate", timeout=60)
    assert again.object_id != sb.object_id
    again.terminate()


def test_terminate_sends_sigterm_first(engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create(
        "python3", "-c",
        "import os, signal, time\n"
        # os.write, not print: the signal may land while print('ready') is still inside
        # stdout's buffer, and print from the handler would then be a reentrant call
        "signal.signal(signal.SIGTERM, lambda *a: (os.write(1, b'got TERM\\n'), os._exit(0)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n",
        timeout=60,
    )
    lines = iter(sb.stdout)
    assert next(lines) == "ready\n"
    sb.terminate(grace_period=10)
    assert sb.returncode == 137
    log = events_blocking(f"/v1/sandboxes/{sb.object_id}/logs", {"follow": "false", "fd": 1})
    assert b"got TERM" in b"".join(e["data"] for e in log if e.get("data"))


def test_concurrent_creates_with_one_name(engine: dict[str, Any]) -> None:
    results: list[object] = []

    def create() -> None:
        try:
            results.append(hutch.Sandbox.create(name="only-one", timeout=60))
        except AlreadyExistsError as exc:
            results.append(exc)

    threads = [threading.Thread(target=create) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    winners = [r for r in results if isinstance(r, hutch.Sandbox)]
    losers = [r for r in results if isinstance(r, AlreadyExistsError)]
    try:
        assert len(winners) == 1
        assert len(losers) == 9
        assert hutch.Sandbox.from_name("default", "only-one").object_id == winners[0].object_id
    finally:
        for sb in winners:
            sb.terminate()


def test_names_are_per_app(engine: dict[str, Any]) -> None:
    a = hutch.App.lookup("it-app-a", create_if_missing=True)
    b = hutch.App.lookup("it-app-b", create_if_missing=True)
    sa = hutch.Sandbox.create(app=a, name="same", timeout=60)
    sb = hutch.Sandbox.create(app=b, name="same", timeout=60)
    try:
        assert hutch.Sandbox.from_name("it-app-a", "same").object_id == sa.object_id
        assert hutch.Sandbox.from_name("it-app-b", "same").object_id == sb.object_id
        listed = {s.object_id for s in hutch.Sandbox.list(app_id=a.app_id)}
        assert listed == {sa.object_id}
    finally:
        sa.terminate()
        sb.terminate()


def test_app_lookup_missing(engine: dict[str, Any]) -> None:
    with pytest.raises(NotFoundError):
        hutch.App.lookup("no-such-app-xyz")


def test_tags_and_list(engine: dict[str, Any]) -> None:
    one = hutch.Sandbox.create(tags={"team": "x", "job": "1"}, timeout=60)
    two = hutch.Sandbox.create(tags={"team": "x", "job": "2"}, timeout=60)
    try:
        assert {s.object_id for s in hutch.Sandbox.list(tags={"team": "x"})} >= {
            one.object_id, two.object_id}
        assert [s.object_id for s in hutch.Sandbox.list(tags={"team": "x", "job": "2"})] == [
            two.object_id]
        one.set_tags({"team": "y"})
        assert hutch.Sandbox.from_id(one.object_id).get_tags() == {"team": "y"}
        assert one.object_id not in {s.object_id for s in hutch.Sandbox.list(tags={"team": "x"})}
    finally:
        one.terminate()
        two.terminate()
    assert two.object_id not in {s.object_id for s in hutch.Sandbox.list(tags={"team": "x"})}


def test_unknown_ids(engine: dict[str, Any]) -> None:
    with pytest.raises(NotFoundError):
        hutch.Sandbox.from_id("sb-doesnotexist0000000000")
    with pytest.raises(NotFoundError):
        hutch.Sandbox.from_name("default", "never-created")


def test_sandbox_ids_look_like_modal(sandbox: hutch.Sandbox) -> None:
    assert sandbox.object_id.startswith("sb-")
    assert len(sandbox.object_id) == 25 and sandbox.object_id[3:].isalnum()


def test_bad_argument_types_are_validation_errors(engine: dict[str, Any]) -> None:
    raw = httpx.Client(transport=httpx.HTTPTransport(uds=str(paths.socket_path())),
                       base_url="http://hutch")
    for body in ({"timeout": "ten"}, {"env": {"A": 1}}, {"entrypoint": "echo hi"},
                 {"workdir": "relative"}, {"name": "has space"}, {"bogus": True}):
        r = raw.post("/v1/sandboxes", json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["type"] == "invalid"
    r = raw.post("/v1/sandboxes", content=b"{not json",
                 headers={"content-type": "application/json"})
    assert r.status_code == 422
    raw.close()
    with pytest.raises(InvalidError):
        hutch.Sandbox.create(timeout=-1)
    with pytest.raises(InvalidError):
        hutch.Sandbox.create(env={"A": 1})  # type: ignore[dict-item]


def test_exec_on_finished_sandbox_conflicts(engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create(timeout=60)
    sb.terminate()
    with pytest.raises(ConflictError):
        sb.exec("true")


def test_entrypoint_that_cannot_start_is_invalid_and_leaves_nothing(
        engine: dict[str, Any]) -> None:
    from pathlib import Path

    def with_rootfs() -> set[str]:
        return {p.name for p in (Path(engine["data_dir"]) / "sandboxes").iterdir()
                if (p / "upper").exists()}

    before = with_rootfs()
    with pytest.raises(InvalidError, match="no-such-command"):
        hutch.Sandbox.create("no-such-command", name="never-started", timeout=60)
    # The failed sandbox frees its name and leaves no directories behind; so does one that
    # was terminated (terminate returns once it is cleaned up).  Sandboxes that other tests
    # left running (or a pool refilling) keep theirs; one the engine's reserve ended in the
    # background (it changed configuration) may still be cleaning up: it is waited for.
    sb = hutch.Sandbox.create(name="never-started", timeout=60)
    sb.terminate()

    def leftovers() -> list[str]:
        return [sid for sid in with_rootfs() - before
                if sid == sb.object_id or _state(sid) != "running"]

    assert sb.object_id not in leftovers()
    wait_for(lambda: not leftovers(), timeout=15, what="no ended sandbox's directories")


def _state(sandbox_id: str) -> str | None:
    try:
        state: str = request_blocking("GET", f"/v1/sandboxes/{sandbox_id}")["state"]
    except NotFoundError:
        return None
    return state
