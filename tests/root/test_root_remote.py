"""Two engines of two users, each reached from the other's side as a remote engine would
be: root's engine served over TLS (``hutch engine serve``) to a program of the test user,
and the test user's engine reached by root over ssh (a real, privileged sshd on a loopback
port with throwaway keys, as on any server).  The seed program gives the same results
through both; each side's client keeps no local engine."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.remote_servers import Sshd, serve_gateway, serve_sshd

SEED = Path(__file__).resolve().parents[1] / "integration" / "remote_seed.py"
ROOT_DIR = Path(__file__).resolve().parents[2]
USER = os.environ.get("HUTCH_TEST_USER", "hutchtest")


def _user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        pytest.skip(f"no user {USER} (tools/setup-host.sh makes it)")


def _owned(path: Path, who: pwd.struct_passwd) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for item in [path, *path.rglob("*")]:
        os.chown(item, who.pw_uid, who.pw_gid)
    return path


def _result(completed: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert completed.returncode == 0, completed.stderr[-3000:]
    seen: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return seen


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    """A directory both users can enter (pytest's own is root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="hutch-remote-it-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def context_dir(shared: Path) -> Path:
    folder = shared / "context"
    folder.mkdir(mode=0o755)
    (folder / "hello.txt").write_text(f"hello {uuid.uuid4().hex}\n")
    (folder / "hello.txt").chmod(0o644)
    return folder


def _check(seen: dict[str, Any], context_dir: Path) -> None:
    assert seen["first"] == "ready\n" and seen["code"] == 7
    assert seen["rest"] == [(context_dir / "hello.txt").read_text()]
    assert seen["stderr"] == "to-stderr\n" and seen["uploaded"] == seen["local_sha"]
    assert seen["after_terminate"] is True


def test_roots_engine_over_tls_to_another_user(root_engine: dict[str, Any],
                                               context_dir: Path, shared: Path,
                                               tmp_path: Path) -> None:
    who = _user()
    client = shared / "client"
    with serve_gateway(tmp_path / "bundle", prefix="root-it") as port:
        shutil.copytree(tmp_path / "bundle", client / "bundle")  # the copy a user is handed
        _owned(client, who)
        env = {"HOME": who.pw_dir, "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "LANG": "C.UTF-8", "PYTHONPATH": str(ROOT_DIR),
               "HUTCH_ENGINE": f"https://127.0.0.1:{port}",
               "HUTCH_ENGINE_CREDENTIALS": str(client / "bundle"),
               "HUTCH_RUNTIME_DIR": str(client / "run"), "HUTCH_DATA_DIR": str(client / "data")}
        completed = subprocess.run(
            ["runuser", "-u", USER, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()),
             sys.executable, str(SEED), str(context_dir)],
            capture_output=True, text=True, timeout=600)
        _check(_result(completed), context_dir)
        assert not (client / "run" / "engine.sock").exists()


@pytest.fixture
def root_sshd(shared: Path) -> Iterator[tuple[Sshd, Path]]:
    """A privileged sshd, as on any server, letting in the test user only; its sessions
    find that user's engine in a runtime directory of this test's."""
    who = _user()
    runtime = Path(f"/tmp/hutch-remote-{who.pw_uid}")
    data = Path(os.environ.get("HUTCH_TEST_DATA", Path(who.pw_dir) / ".cache" / "hutch-it"))
    where = shared / "sshd"
    where.mkdir(mode=0o755)
    with serve_sshd(where, {"HUTCH_RUNTIME_DIR": str(runtime), "HUTCH_DATA_DIR": str(data),
                            "PYTHONPATH": str(ROOT_DIR)}, allow_user=USER) as served:
        yield served, runtime


def test_another_users_engine_over_ssh(root_engine: dict[str, Any], context_dir: Path,
                                       root_sshd: tuple[Sshd, Path],
                                       tmp_path: Path) -> None:
    sshd, runtime = root_sshd
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUTCH_")}
    env.update(HUTCH_ENGINE=f"ssh://{USER}@127.0.0.1:{sshd.port}",
               HUTCH_SSH_HUTCH=f"{sys.executable} -m hutch",
               HUTCH_SSH_OPTIONS=sshd.options(),
               HUTCH_RUNTIME_DIR=str(tmp_path / "run"), HUTCH_DATA_DIR=str(tmp_path / "data"),
               PYTHONPATH=str(ROOT_DIR))
    try:
        seen = _result(subprocess.run([sys.executable, str(SEED), str(context_dir)], env=env,
                                      capture_output=True, text=True, timeout=900))
        _check(seen, context_dir)
        # it was the other user's engine that ran it, not root's
        owner = os.stat(runtime / "engine.sock").st_uid
        assert owner == _user().pw_uid
        assert not (tmp_path / "run" / "engine.sock").exists()
    finally:
        subprocess.run([sys.executable, "-m", "hutch", "engine", "stop"], env=env,
                       capture_output=True, timeout=120)
        subprocess.run(["runuser", "-u", USER, "--", "env", f"HUTCH_RUNTIME_DIR={runtime}",
                        f"PYTHONPATH={ROOT_DIR}", sys.executable, "-m", "hutch", "engine",
                        "stop"], capture_output=True, timeout=120)
