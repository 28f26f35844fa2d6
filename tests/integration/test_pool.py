"""Warm pools: a pooled sandbox is indistinguishable from a fresh one to its user, is handed
out once, and only to a create it matches."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hutch
from hutch.exception import InvalidError, SandboxTimeoutError
from hutch.sdk.transport import request_blocking
from tests.helpers import kill_daemon, wait_for

PROBE = ("echo $A $B; pwd; hostname; tr '\\0' '\\n' < /proc/1/environ | sort | tr '\\n' ' ';"
         " echo; readlink /proc/1/cwd; cat /proc/1/cmdline | tr '\\0' ' '")


def _app() -> hutch.App:
    return hutch.App.lookup(f"pool-{uuid.uuid4().hex[:8]}", create_if_missing=True)


@pytest.fixture
def app_and_pool(engine: dict[str, Any]) -> Iterator[tuple[hutch.App, hutch.WarmPool]]:
    app = _app()
    pool = app.warm_pool(size=2)
    pool.wait_ready(timeout=60)
    yield app, pool
    pool.delete()


def _view(sb: hutch.Sandbox) -> list[str]:
    p = sb.exec("sh", "-c", PROBE)
    out = p.stdout.read().splitlines()
    assert p.wait() == 0
    return [line.replace(sb.object_id, "<id>") for line in out]


def test_a_pooled_sandbox_looks_like_a_fresh_one(
        app_and_pool: tuple[hutch.App, hutch.WarmPool]) -> None:
    app, pool = app_and_pool
    secret = hutch.Secret.from_dict({"B": "from-secret"})
    kwargs: dict[str, Any] = {"env": {"A": "from-env"}, "secrets": [secret],
                              "workdir": "/work/here", "tags": {"t": "1"}, "timeout": 60}
    pooled = hutch.Sandbox.create(app=app, name="pooled", **kwargs)
    assert pool.stats()["taken"] == 1
    fresh = hutch.Sandbox.create(app=app, name="fresh", block_network=True, **kwargs)
    try:
        assert pool.stats()["taken"] == 1  # other settings: not from the pool
        assert _view(pooled) == _view(fresh)
        assert _view(pooled)[:3] == ["from-env from-secret", "/work/here", "<id>"]
        assert hutch.Sandbox.from_name(app.name or "", "pooled").object_id == pooled.object_id
        listed = {sb.object_id for sb in hutch.Sandbox.list(app_id=app.app_id)}
        assert listed == {pooled.object_id, fresh.object_id}  # waiting ones are not listed
        assert pooled.get_tags() == {"t": "1"}
        assert pooled.exec("python3", "-c", "print(1)").stdout.read() == "1\n"
    finally:
        pooled.terminate()
        fresh.terminate()


def test_pooled_sandboxes_are_handed_out_once(
        app_and_pool: tuple[hutch.App, hutch.WarmPool]) -> None:
    app, pool = app_and_pool
    taken = []
    for i in range(5):
        sb = hutch.Sandbox.create(app=app, timeout=60)
        taken.append(sb)
        assert sb.ls("/tmp") == []  # nothing left by an earlier user
        sb.exec("touch", f"/tmp/mark-{i}").wait()
    try:
        assert len({sb.object_id for sb in taken}) == 5
        assert pool.stats()["taken"] >= 2  # the first two came from the pool at least
        pool.wait_ready(timeout=60)
        again = hutch.Sandbox.create(app=app, timeout=60)
        assert again.object_id not in {sb.object_id for sb in taken}
        assert again.ls("/tmp") == []
        again.terminate()
    finally:
        for sb in taken:
            sb.terminate()


def test_a_pooled_sandbox_keeps_its_own_timeout(
        app_and_pool: tuple[hutch.App, hutch.WarmPool]) -> None:
    app, pool = app_and_pool
    sb = hutch.Sandbox.create(app=app, timeout=2)
    assert pool.stats()["taken"] == 1
    with pytest.raises(SandboxTimeoutError):
        sb.wait()
    assert sb.returncode == 124
    idle = hutch.Sandbox.create(app=app, timeout=60, idle_timeout=1)
    with pytest.raises(SandboxTimeoutError):
        idle.wait()


def test_a_pool_with_a_volume(engine: dict[str, Any]) -> None:
    app = _app()
    volume = hutch.Volume.from_name(f"pool-{uuid.uuid4().hex[:8]}", create_if_missing=True)
    pool = app.warm_pool(size=1, volumes={"/data": volume}, memory=(32, 256))
    try:
        pool.wait_ready(timeout=60)
        sb = hutch.Sandbox.create(app=app, volumes={"/data": volume}, memory=(32, 256),
                                  timeout=60)
        assert pool.stats()["taken"] == 1
        sb.exec("sh", "-c", "echo hi > /data/f").wait()
        sb.terminate()
        assert b"".join(volume.read_file("f")) == b"hi\n"
        other = hutch.Sandbox.create(app=app, volumes={"/data": volume}, timeout=60)
        assert pool.stats()["taken"] == 1  # no memory limit: not the pool's settings
        other.terminate()
    finally:
        pool.delete()
        hutch.Volume.delete(volume.name or "")


def test_deleting_a_pool_and_restarting_the_engine_end_waiting_sandboxes(
        engine: dict[str, Any]) -> None:
    app = _app()
    pool = app.warm_pool(size=2)
    pool.wait_ready(timeout=60)

    def pooled_rows() -> int:
        listed = request_blocking("GET", "/v1/pools")
        return sum(p["ready"] for p in listed if p["pool_id"] == pool.pool_id)

    assert pooled_rows() == 2
    kill_daemon()
    assert all(p["pool_id"] != pool.pool_id for p in request_blocking("GET", "/v1/pools"))
    wait_for(lambda: not _running_pooled(), timeout=30, what="pooled sandboxes to end")
    pool = app.warm_pool(size=1)
    pool.wait_ready(timeout=60)
    assert _running_pooled()
    pool.delete()
    assert not _running_pooled()


def test_stopping_the_app_ends_its_pools(engine: dict[str, Any]) -> None:
    app = _app()
    before = _unlisted()  # (the engine's reserve may keep some)
    pool = app.warm_pool(size=2)
    pool.wait_ready(timeout=60)
    waiting = _unlisted() - before  # the pool's 2 (and any the reserve started meanwhile)
    assert len(waiting) >= 2
    app.stop()
    assert all(p["pool_id"] != pool.pool_id for p in request_blocking("GET", "/v1/pools"))
    # ended, and the pool is gone: nothing refills it
    assert len(waiting & _unlisted()) <= len(waiting) - 2


def _unlisted() -> set[str]:
    """The running sandboxes not listed: waiting pooled ones (every running sandbox has an
    ``init.pid`` in its directory until its cleanup)."""
    listed = {sb.object_id for sb in hutch.Sandbox.list()}
    sandboxes = Path(request_blocking("GET", "/v1/engine")["data_dir"]) / "sandboxes"
    return {d.name for d in sandboxes.iterdir() if (d / "init.pid").exists()} - listed


def _running_pooled() -> bool:
    """Whether the engine runs a sandbox that is not listed (a waiting pooled one): every
    running sandbox has an ``init.pid`` in its directory until its cleanup."""
    listed = {sb.object_id for sb in hutch.Sandbox.list()}
    sandboxes = Path(request_blocking("GET", "/v1/engine")["data_dir"]) / "sandboxes"
    running = {d.name for d in sandboxes.iterdir() if (d / "init.pid").exists()}
    return bool(running - listed)


def test_bad_pools(engine: dict[str, Any]) -> None:
    app = _app()
    with pytest.raises(InvalidError, match="size"):
        app.warm_pool(size=0)
    with pytest.raises(InvalidError, match="lower than request"):
        app.warm_pool(memory=(64, 32))
    with pytest.raises(hutch.exception.NotFoundError):
        hutch.WarmPool({"pool_id": "wp-nope", "size": 1}).stats()
