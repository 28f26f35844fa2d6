"""The engine reached from elsewhere: ``hutch engine serve --listen`` (TLS, client
certificate, token) and ``ssh://`` (an sshd the test starts on a loopback port with
throwaway keys, the engine's socket forwarded by the real ``ssh``).  The seed program
(tests/integration/remote_seed.py) gives the same results through both as locally; wrong
credentials get a clear error and nothing else.

The client runs as its own process with a local runtime directory of its own, empty: were
it to miss the remote engine, it would start (and be seen starting) a local one there.
Two engines of two users are tests/root/test_root_remote.py.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.remote_servers import Sshd, serve_gateway, serve_sshd

SEED = Path(__file__).with_name("remote_seed.py")
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Gateway:
    url: str
    port: int
    bundle: Path


@pytest.fixture(scope="module")
def gateway(engine: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Gateway]:
    bundle = tmp_path_factory.mktemp("remote") / "bundle"
    with serve_gateway(bundle) as port:
        yield Gateway(f"https://127.0.0.1:{port}", port, bundle)


def _client_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The environment of a program on the client side: no local engine of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUTCH_")}
    env.update(HUTCH_RUNTIME_DIR=str(tmp_path / "client-run"),
               HUTCH_DATA_DIR=str(tmp_path / "client-data"),
               XDG_CONFIG_HOME=str(tmp_path / "client-config"), **settings)
    if "PYTHONPATH" not in env:
        env["PYTHONPATH"] = str(ROOT)
    return env


def _run(env: dict[str, str], *args: str, timeout: float = 600
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _seed(env: dict[str, str], local: Path) -> dict[str, Any]:
    result = _run(env, str(SEED), str(local))
    assert result.returncode == 0, result.stderr[-3000:]
    seen: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return seen


@pytest.fixture(scope="module")
def local_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("context")
    (folder / "hello.txt").write_text(f"hello {uuid.uuid4().hex}\n")
    return folder


@pytest.fixture(scope="module")
def local_result(engine: dict[str, Any], local_dir: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT))}
    seen = _seed(env, local_dir)
    assert seen["first"] == "ready\n" and seen["code"] == 7, seen
    assert seen["rest"] == [(local_dir / "hello.txt").read_text()]
    assert seen["stderr"] == "to-stderr\n" and seen["uploaded"] == seen["local_sha"]
    return seen


def _no_local_engine(tmp_path: Path) -> None:
    assert not (tmp_path / "client-run" / "engine.sock").exists()


def test_the_seed_program_over_tls(gateway: Gateway, local_result: dict[str, Any],
                                   local_dir: Path, tmp_path: Path) -> None:
    env = _client_env(tmp_path, HUTCH_ENGINE=gateway.url,
                      HUTCH_ENGINE_CREDENTIALS=str(gateway.bundle))
    assert _seed(env, local_dir) == local_result
    _no_local_engine(tmp_path)


def test_the_cli_through_a_context(gateway: Gateway, tmp_path: Path) -> None:
    env = _client_env(tmp_path)
    made = _run(env, "-m", "hutch", "context", "create", "served", "--engine", gateway.url,
                "--credentials", str(gateway.bundle))
    assert made.returncode == 0, made.stderr
    assert _run(env, "-m", "hutch", "context", "use", "served").returncode == 0
    shown = _run(env, "-m", "hutch", "context", "show")
    assert shown.stdout.strip() == gateway.url
    ran = _run(env, "-m", "hutch", "run", "--", "sh", "-c", "echo through-$((40+2))")
    assert (ran.returncode, ran.stdout) == (0, "through-42\n"), ran.stderr
    _no_local_engine(tmp_path)


PROBE = "import hutch; hutch.Sandbox.create(timeout=30).terminate(); print('reached')"


def test_a_wrong_token_is_refused_clearly(gateway: Gateway, tmp_path: Path) -> None:
    forged = tmp_path / "forged"
    shutil.copytree(gateway.bundle, forged)
    (forged / "token").write_text("hutch_" + "A" * 43 + "\n")
    env = _client_env(tmp_path, HUTCH_ENGINE=gateway.url,
                      HUTCH_ENGINE_CREDENTIALS=str(forged))
    result = _run(env, "-c", PROBE, timeout=120)
    assert result.returncode != 0 and "reached" not in result.stdout
    assert "AuthError" in result.stderr and "refused the token" in result.stderr, \
        result.stderr[-2000:]
    _no_local_engine(tmp_path)


def test_a_missing_certificate_is_refused(gateway: Gateway, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(gateway.bundle, partial)
    (partial / "client.crt").unlink()
    env = _client_env(tmp_path, HUTCH_ENGINE=gateway.url,
                      HUTCH_ENGINE_CREDENTIALS=str(partial))
    result = _run(env, "-c", PROBE, timeout=120)
    assert result.returncode != 0 and "lacks client.crt" in result.stderr, result.stderr
    # and the server itself refuses a TLS client without one, with the right token
    context = ssl.create_default_context(cafile=str(gateway.bundle / "ca.crt"))
    token = (gateway.bundle / "token").read_text().strip()
    raw = socket.create_connection(("127.0.0.1", gateway.port), timeout=20)
    with pytest.raises((ssl.SSLError, ConnectionError)), \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(f"GET /v1/health HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\r\n"
                    .encode())
        if not tls.recv(4096):
            raise ConnectionError("closed without an answer")
    raw.close()


def test_plain_http_is_refused(gateway: Gateway, tmp_path: Path) -> None:
    answer = httpx.get(f"http://127.0.0.1:{gateway.port}/v1/health", timeout=20)
    assert answer.status_code == 400 and "HTTPS only" in answer.json()["message"]
    env = _client_env(tmp_path, HUTCH_ENGINE=f"http://127.0.0.1:{gateway.port}")
    result = _run(env, "-c", PROBE, timeout=120)
    assert result.returncode != 0 and "http:// is refused" in result.stderr, result.stderr


@pytest.fixture(scope="module")
def sshd(engine: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """sshd as this user, its sessions given the test engine's dirs: a login there finds
    the engine as the user's own would be found."""
    carried = {k: os.environ[k] for k in ("HUTCH_RUNTIME_DIR", "HUTCH_DATA_DIR",
                                          "PYTHONPATH") if k in os.environ}
    carried.setdefault("PYTHONPATH", str(ROOT))
    with serve_sshd(tmp_path_factory.mktemp("sshd"), carried) as served:
        yield served


def _ssh_env(tmp_path: Path, sshd: Sshd, url: str) -> dict[str, str]:
    return _client_env(
        tmp_path, HUTCH_ENGINE=url, HUTCH_SSH_HUTCH=f"{sys.executable} -m hutch",
        HUTCH_SSH_OPTIONS=sshd.options())


def test_the_seed_program_over_ssh(sshd: Sshd, local_result: dict[str, Any],
                                   local_dir: Path, tmp_path: Path) -> None:
    """No socket path in the URL: ``hutch engine socket`` on the far side finds it."""
    url = f"ssh://{getpass.getuser()}@127.0.0.1:{sshd.port}"
    assert _seed(_ssh_env(tmp_path, sshd, url), local_dir) == local_result
    _no_local_engine(tmp_path)


def test_ssh_with_the_socket_in_the_url(sshd: Sshd, engine: dict[str, Any],
                                        tmp_path: Path) -> None:
    socket_path = Path(os.environ["HUTCH_RUNTIME_DIR"]) / "engine.sock"
    url = f"ssh://{getpass.getuser()}@127.0.0.1:{sshd.port}{socket_path}"
    env = _ssh_env(tmp_path, sshd, url)
    env["HUTCH_SSH_HUTCH"] = "/nonexistent/hutch"  # not asked: the URL says where
    result = _run(env, "-c", PROBE, timeout=300)
    assert (result.returncode, result.stdout) == (0, "reached\n"), result.stderr[-2000:]


def test_ssh_to_an_unknown_host_key_is_refused(sshd: Sshd, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    url = f"ssh://{getpass.getuser()}@127.0.0.1:{sshd.port}/run/engine.sock"
    env = _client_env(tmp_path, HUTCH_ENGINE=url, HUTCH_SSH_OPTIONS=(
        f"-i {sshd.key} -o UserKnownHostsFile={empty} -o StrictHostKeyChecking=yes"))
    result = _run(env, "-c", PROBE, timeout=120)
    assert result.returncode != 0 and "Host key verification failed" in result.stderr, \
        result.stderr[-2000:]
