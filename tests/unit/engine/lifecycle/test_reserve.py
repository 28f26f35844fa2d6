"""The engine's reserve (hutch/engine/lifecycle/reserve.py): the waiter and its launch
script run by the host's real dash, the command lookup in a root file system, and the
keeper against a fake manager (trio's MockClock jumps over its waits)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from hutch.api.models import (
    CreateSandboxRequest,
    NetworkAttachment,
    ProbeSpec,
    PtySpec,
    VolumeMount,
)
from hutch.engine.lifecycle import reserve
from hutch.imagebuild.layout import Image

IMAGE = Image(ref="hutch/test", digest="sha256:" + "c" * 64,
              layer_dirs=[Path("/layers/" + "d" * 64)])
REPORT = "import json, os, sys; print(json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd()," \
    " 'env': dict(os.environ), 'stdin': sys.stdin.read()}))"


@pytest.mark.skipif(not Path("/bin/dash").exists(), reason="the host has no dash")
def test_the_waiter_runs_exactly_the_command_it_is_given(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", REPORT, "it's", "a\nb", "$HOME", "`id`", "-x", "", "\\",
            " spaced ", "tok"]
    env = {"PATH": "/usr/bin:/bin", "QUOTED": "it's \"q\"\n$x", "EMPTY": "",
           "LC_ALL": "C.UTF-8"}  # (else Python itself adds LC_CTYPE: PEP 538)
    token = "tok"  # the same as an argument, alone on no line of its own
    script = reserve.launch_script(argv, env, str(tmp_path), token)
    done = subprocess.run(["/bin/dash", "-c", reserve.WAITER], input=script + b"after\n",
                          capture_output=True, env={}, cwd="/", check=True)
    got = json.loads(done.stdout)
    assert got["argv"] == argv[3:]
    assert got["cwd"] == str(tmp_path)
    assert got["env"] == env  # nothing of the shell's own (PWD, OLDPWD, t, c, l)
    assert got["stdin"] == "after\n"  # what follows the script is the command's


def test_a_missing_workdir_ends_with_126(tmp_path: Path) -> None:
    script = reserve.launch_script(["true"], {}, str(tmp_path / "none"), "t0")
    done = subprocess.run(["/bin/dash", "-c", reserve.WAITER], input=script,
                          capture_output=True, env={})
    assert done.returncode == 126


def test_only_requests_made_alike_share_a_key() -> None:
    base = CreateSandboxRequest(network="open")
    key = reserve.reserve_key(base, "ap-1", IMAGE)
    assert key is not None
    same = base.model_copy(update={"entrypoint": ["python3"], "env": {"A": "1"},
                                   "workdir": "/w", "name": "n", "timeout": 10.0})
    assert reserve.reserve_key(same, "ap-1", IMAGE) == key
    assert reserve.reserve_key(base, "ap-2", IMAGE) != key
    assert reserve.reserve_key(base.model_copy(update={"pids_limit": 99}), "ap-1",
                               IMAGE) != key
    for refused in ({"pty": PtySpec()}, {"network_attachment": NetworkAttachment(name="n")},
                    {"readiness_probe": ProbeSpec(tcp_port=80)},
                    {"volumes": {"/data": VolumeMount(name="v")}}):
        assert reserve.reserve_key(base.model_copy(update=refused), "ap-1", IMAGE) is None


def _root(tmp_path: Path, shell: str = "dash") -> Path:
    root = tmp_path / "root"
    for d in ("bin", "usr/bin", "opt"):
        (root / d).mkdir(parents=True)
    for name, mode in (("usr/bin/python3", 0o755), ("usr/bin/data", 0o644),
                       ("usr/bin/dash", 0o755), ("usr/bin/bash", 0o755)):
        (root / name).write_text("")
        (root / name).chmod(mode)
    (root / "bin/sh").symlink_to(f"/usr/bin/{shell}")  # absolute: resolved in the root
    (root / "opt/tool").symlink_to("/usr/bin/python3")
    return root


def test_commands_are_found_as_exec_finds_them(tmp_path: Path) -> None:
    root = _root(tmp_path)
    env = {"PATH": "/nowhere:/usr/bin"}
    assert reserve.finds_command(root, "python3", env, "/")
    assert reserve.finds_command(root, "/opt/tool", env, "/")
    assert reserve.finds_command(root, "./tool", env, "/opt")
    assert not reserve.finds_command(root, "data", env, "/")  # not executable
    assert not reserve.finds_command(root, "missing", env, "/")
    assert not reserve.finds_command(root, "python3", {"PATH": "/opt"}, "/")
    # a link leaving the root is resolved inside it
    (root / "opt/out").symlink_to("../../../../../../" + shutil.which("true").lstrip("/"))
    assert not reserve.finds_command(root, "/opt/out", env, "/")


def test_only_dash_images_are_kept(tmp_path: Path) -> None:
    assert reserve.runs_dash(_root(tmp_path / "a"))
    assert not reserve.runs_dash(_root(tmp_path / "b", shell="bash"))
    assert not reserve.runs_dash(tmp_path / "empty")


class FakeHost:
    """What the reserve uses of the manager: sandboxes are names in ``live``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.live: dict[str, Any] = {}
        self.adopted: list[str] = []
        self.written: dict[str, bytes] = {}
        self.terminated: list[str] = []
        self.ids = (f"sb-{n}" for n in itertools.count())
        self.layers = ["sha256:" + p.name for p in IMAGE.layer_dirs]
        self.store = SimpleNamespace(sandbox_by_name=self._by_name, sandbox=lambda sid: (
            SimpleNamespace(spec=SimpleNamespace(layers=self.layers))))

    @staticmethod
    def _by_name(app_id: str, name: str) -> None:
        from hutch.engine.errors import NotFound
        raise NotFound(name)

    async def create(self, req: CreateSandboxRequest, *, pooled: bool = False,
                     waiter: bool = False) -> Any:
        assert pooled and waiter
        await trio.sleep(0.03)
        sandbox_id = next(self.ids)
        self.live[sandbox_id] = SimpleNamespace(
            sandbox_id=sandbox_id, done=trio.Event(), dirs=SimpleNamespace(merged=self.root),
            default_entrypoint=True, owner=None)
        return SimpleNamespace(sandbox_id=sandbox_id)

    def adopt_pooled(self, sandbox_id: str, req: CreateSandboxRequest, image: Image) -> Any:
        self.adopted.append(sandbox_id)
        return SimpleNamespace(sandbox_id=sandbox_id)

    async def terminate(self, sandbox_id: str, grace: float) -> Any:
        self.terminated.append(sandbox_id)
        self.live.pop(sandbox_id).done.set()

    async def write_stdin(self, sandbox_id: str, data: bytes, eof: bool) -> None:
        self.written[sandbox_id] = data


def test_the_keeper_keeps_the_configuration_used_most(tmp_path: Path) -> None:
    host = FakeHost(_root(tmp_path))
    plain = CreateSandboxRequest(entrypoint=["python3", "-c", "1"])
    limited = plain.model_copy(update={"pids_limit": 100})

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            kept = reserve.Reserve(host, nursery, 2)  # type: ignore[arg-type]
            assert await kept.take(plain, "ap", IMAGE) is None  # seen once: nothing kept
            assert await kept.take(plain, "ap", IMAGE) is None  # now kept, not yet ready
            await trio.sleep(1)
            assert kept.info() == {"size": 2, "ready": 2, "taken": 0}
            row = await kept.take(plain, "ap", IMAGE)
            assert row is not None and host.adopted == [row.sandbox_id]
            assert b"exec 'python3' '-c' '1'" in host.written[row.sandbox_id]
            assert host.live[row.sandbox_id].default_entrypoint is False
            missing = plain.model_copy(update={"entrypoint": ["no-such-command"]})
            assert await kept.take(missing, "ap", IMAGE) is None  # the usual create fails
            await trio.sleep(1)
            assert kept.info()["ready"] == 2  # refilled; the missing one took none
            for _ in range(5):  # another configuration becomes the one used most
                assert await kept.take(limited, "ap", IMAGE) is None
            await trio.sleep(1)
            assert set(host.terminated) == {"sb-1", "sb-2"}  # the plain ones waiting
            assert kept.info()["ready"] == 2  # and two of the new one
            kept.resize(0)
            await trio.sleep(1)
            assert kept.info()["ready"] == 0
            await kept.close()
            assert set(host.live) == {row.sandbox_id}  # only the one taken runs on

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_two_configurations_in_turn_do_not_churn(tmp_path: Path) -> None:
    host = FakeHost(_root(tmp_path))
    one = CreateSandboxRequest(entrypoint=["python3"])
    two = one.model_copy(update={"pids_limit": 100})

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            kept = reserve.Reserve(host, nursery, 2)  # type: ignore[arg-type]
            for _ in range(2):
                await kept.take(one, "ap", IMAGE)
            await trio.sleep(1)
            for _ in range(12):  # in turn: ties never take over from the one kept
                await kept.take(two, "ap", IMAGE)
                await kept.take(one, "ap", IMAGE)
                await trio.sleep(1)
            assert host.terminated == []  # nothing retired
            await kept.close()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_requests_the_waiter_cannot_run_alike_are_made_fresh(tmp_path: Path) -> None:
    root = _root(tmp_path)
    env = {"PATH": "/usr/bin"}
    assert reserve._script(root, ["python3"], env, "/") is not None
    assert reserve._script(root, ["python3"], {**env, "spring.profile": "x"}, "/") is None
    assert reserve._script(root, ["python3", "\n" * 2000], env, "/") is None
    assert reserve._script(root, ["python3", "\udc80"], env, "/") is None
    assert reserve._script(root, ["missing"], env, "/") is None


def test_a_waiting_sandbox_that_ends_is_replaced(tmp_path: Path) -> None:
    host = FakeHost(_root(tmp_path))
    req = CreateSandboxRequest(entrypoint=["python3"])

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            kept = reserve.Reserve(host, nursery, 2)  # type: ignore[arg-type]
            for _ in range(2):
                await kept.take(req, "ap", IMAGE)
            await trio.sleep(1)
            assert kept.info()["ready"] == 2
            for sandbox_id in list(host.live):  # both time out while waiting
                host.live.pop(sandbox_id).done.set()
                kept.ended(sandbox_id)
            await trio.sleep(1)
            assert kept.info()["ready"] == 2 and len(host.live) == 2  # made again
            await kept.close()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_engine_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from hutch.engine import serve

    for value, size in (("", reserve.DEFAULT_SIZE), ("0", 0), ("5", 5), ("x", 2),
                        ("999", 2)):
        monkeypatch.setenv("HUTCH_RESERVE", value)
        assert serve._reserve_size() == size
    assert os.environ["HUTCH_RESERVE"] == "999"
