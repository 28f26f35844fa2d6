"""The engine's reserve on the real engine: once a configuration is the one used most, its
creates are served by sandboxes started ahead of time, and what runs in them cannot be told
apart from a fresh sandbox's command: pid 1, its exact argv, environment and working
directory, its stdin untouched, its exit code; a command that does not exist still fails
the create."""

from __future__ import annotations

import json
from typing import Any

import pytest

import hutch
from hutch.exception import InvalidError
from hutch.sdk.transport import request_blocking
from tests.helpers import wait_for

#: A configuration of these tests' own (its pids limit), made the one used most by
#: :func:`kept` so that the reserve serves it.
PIDS = 1999

REPORT = "import json, os, sys; print(json.dumps({'pid': os.getpid(), 'cwd': os.getcwd(), " \
    "'argv': sys.argv[1:], 'env': dict(os.environ)}))"


def reserve() -> dict[str, int]:
    info: dict[str, int] = request_blocking("GET", "/v1/engine")["reserve"]
    return info


@pytest.fixture
def kept(engine: dict[str, Any]) -> dict[str, int]:
    """The reserve keeping sandboxes of ``pids_limit=PIDS``: created often enough to be the
    most used among the latest creates, then waited for."""
    if reserve()["size"] == 0:
        pytest.skip("the engine keeps no reserve (HUTCH_RESERVE=0)")
    for _ in range(9):
        hutch.Sandbox.create("true", pids_limit=PIDS, timeout=30)
    wait_for(lambda: reserve()["ready"] == reserve()["size"], timeout=60,
             what="the reserve filled")
    return reserve()


def _create(*args: str, **kw: Any) -> hutch.Sandbox:
    return hutch.Sandbox.create(*args, pids_limit=PIDS, timeout=60, **kw)


def test_a_reserved_sandbox_runs_its_command_as_a_fresh_one(kept: dict[str, int]) -> None:
    tricky = ["it's", "a\nb", "$HOME", "`id`", "-x", "", "\\", " spaced "]
    env = {"GREETING": "it's \"quoted\"\nand $dollar", "EMPTY": ""}
    sb = _create("python3", "-c", REPORT, *tricky, env=env, workdir="/tmp/work")
    assert reserve()["taken"] == kept["taken"] + 1
    try:
        sb.wait(raise_on_termination=False)
        assert sb.returncode == 0, sb.stderr.read()
        got = json.loads(sb.stdout.read())
        assert got["pid"] == 1 and got["cwd"] == "/tmp/work"
        assert got["argv"] == tricky
        assert got["env"] == {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOSTNAME": sb.object_id, "PYTHONUNBUFFERED": "1", "HOME": "/root", **env,
            **{k: v for k, v in got["env"].items() if k in ("LANG", "PYTHON_VERSION")}}
        assert not set(got["env"]) & {"PWD", "OLDPWD", "t", "c", "l"}
        # the same command in a sandbox the reserve did not serve (another configuration)
        fresh = hutch.Sandbox.create("python3", "-c", REPORT, *tricky, env=env,
                                     workdir="/tmp/work", timeout=60, block_network=True)
        fresh.wait(raise_on_termination=False)
        assert fresh.returncode == 0, fresh.stderr.read()
        other = json.loads(fresh.stdout.read())
        assert other["argv"] == got["argv"] and other["pid"] == 1
        assert {k: v for k, v in other["env"].items() if k != "HOSTNAME"} == \
            {k: v for k, v in got["env"].items() if k != "HOSTNAME"}
    finally:
        sb.terminate()


def test_stdin_and_exit_code_are_the_commands(kept: dict[str, int]) -> None:
    sb = _create("sh", "-c", "cat; exit 7")
    try:
        sb.stdin.write(b"line one\nline two\n")
        sb.stdin.write_eof()
        sb.stdin.drain()
        sb.wait(raise_on_termination=False)
        assert sb.returncode == 7
        assert sb.stdout.read() == "line one\nline two\n"
    finally:
        sb.terminate()
    assert reserve()["taken"] == kept["taken"] + 1


def test_the_default_entrypoint_and_execs(kept: dict[str, int]) -> None:
    sb = _create()
    try:
        p = sb.exec("sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; echo $PWD")
        assert p.wait() == 0
        assert p.stdout.read() == "sleep infinity /\n"
        assert reserve()["taken"] == kept["taken"] + 1
    finally:
        sb.terminate()
    assert sb.poll() is not None


def test_a_missing_command_still_fails_the_create(kept: dict[str, int]) -> None:
    with pytest.raises(InvalidError):
        _create("no-such-command-here")
    assert reserve()["taken"] == kept["taken"]  # not served: created, and refused, as ever


def test_waiting_sandboxes_are_nobodys(kept: dict[str, int]) -> None:
    listed = {sb.object_id for sb in hutch.Sandbox.list()}
    sb = _create("sleep", "60")
    try:
        assert sb.object_id not in listed  # it waited unlisted
        assert sb.object_id in {s.object_id for s in hutch.Sandbox.list()}
    finally:
        sb.terminate()


def _waiting() -> int:
    """The reserve's sandboxes waiting now, seen as processes: pid 1 of each runs WAITER,
    a child of this engine's pause process (another engine of the machine has its own)."""
    from pathlib import Path

    from hutch.api import paths
    from hutch.engine.lifecycle.reserve import WAITER_ARGV

    wanted = ("\0".join(WAITER_ARGV) + "\0").encode()
    pause = (paths.runtime_dir() / paths.PAUSE_PID).read_text().strip()
    count = 0
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "cmdline").read_bytes() != wanted:
                    continue
                status = (proc / "status").read_text()
            except OSError:
                continue
            count += f"\nPPid:\t{pause}\n" in status
    return count


def test_stopping_an_app_ends_what_the_reserve_keeps_for_it(engine: dict[str, Any]) -> None:
    """``App.stop`` ends the app's sandboxes, the ones waiting for it included, and the
    reserve keeps none for it until it creates again."""
    if reserve()["size"] == 0:
        pytest.skip("the engine keeps no reserve (HUTCH_RESERVE=0)")
    app = hutch.App.lookup("reserve-stop-test", create_if_missing=True)
    for _ in range(9):  # (the latest creates are all this app's)
        hutch.Sandbox.create("true", app=app, pids_limit=PIDS - 1, timeout=30)
    wait_for(lambda: reserve()["ready"] == reserve()["size"] and _waiting() == reserve()["size"],
             timeout=60, what="the reserve filled for the app")
    app.stop()
    assert reserve()["ready"] == 0 and _waiting() == 0
    taken = reserve()["taken"]
    sb = hutch.Sandbox.create("true", app=app, pids_limit=PIDS - 1, timeout=30)
    assert reserve()["taken"] == taken  # a fresh one: the app is in use again
    sb.wait(raise_on_termination=False)
    assert sb.returncode == 0
