"""What the remote-engine tests reach an engine through: ``hutch engine serve`` on a loopback
port with a client bundle issued for the test, and an sshd of the test's own on a loopback
port, with throwaway host and user keys, as a user's ssh would reach a server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import hutch_cli, wait_for
from tests.integration.registry import free_port


@dataclass
class Sshd:
    port: int
    key: Path
    known_hosts: Path

    def options(self) -> str:
        """``HUTCH_SSH_OPTIONS`` for a client that logs in with the key and knows the host
        key (and no other)."""
        return (f"-i {self.key} -o UserKnownHostsFile={self.known_hosts} "
                "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes")


def answers(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def serve_sshd(where: Path, session_env: dict[str, str], allow_user: str | None = None
               ) -> Iterator[Sshd]:
    """sshd (as whoever runs it: a user's sshd logs in only that user) on a free loopback
    port, its files in ``where``, each session given ``session_env`` (``SetEnv``).  sshd
    forwards a Unix socket only where it may forward TCP too: ``local`` here, ``yes`` by
    Debian's default.  ``StrictModes no``: the keys lie under /tmp, which is everyone's."""
    binary = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(binary) or shutil.which("ssh") is None:
        pytest.skip("openssh-server is not installed (tools/setup-host.sh installs it)")
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(where / name)], check=True)
    shutil.copy(where / "user_key.pub", where / "authorized_keys")
    (where / "authorized_keys").chmod(0o644)  # (sshd reads it as the user logging in)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation
    port = free_port()
    (where / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {where / 'host_key'}",
        f"AuthorizedKeysFile {where / 'authorized_keys'}", "PidFile none", "UsePAM no",
        "StrictModes no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        *([f"AllowUsers {allow_user}"] if allow_user else []),
        "AllowStreamLocalForwarding yes", "AllowTcpForwarding local", "X11Forwarding no",
        "SetEnv " + " ".join(f"{k}={v}" for k, v in session_env.items()), ""]))
    host_key = (where / "host_key.pub").read_text().split()
    (where / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    process = subprocess.Popen([binary, "-D", "-e", "-f", str(where / "sshd_config")],
                               stderr=subprocess.PIPE)
    try:
        wait_for(lambda: process.poll() is not None or answers(port), timeout=30,
                 what="sshd")
        assert process.poll() is None, process.stderr.read().decode() if process.stderr \
            else ""
        yield Sshd(port, where / "user_key", where / "known_hosts")
    finally:
        process.terminate()
        process.wait(timeout=20)


@contextmanager
def serve_gateway(bundle: Path, prefix: str = "it", listen: str = "127.0.0.1"
                  ) -> Iterator[int]:
    """``hutch engine serve`` (of the engine this process's environment names) on a free
    port of ``listen``, with a client bundle issued into ``bundle``; yields the port.  The
    client is revoked at the end."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    made = hutch_cli("engine", "remote-credentials", "--name", name, "--host", "127.0.0.1",
                     "--out", str(bundle))
    assert made.returncode == 0, made.stderr.decode()
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "hutch", "engine", "serve", "--listen",
                                f"tcp://{listen}:{port}"], stderr=subprocess.PIPE,
                               env=os.environ.copy())
    try:
        wait_for(lambda: process.poll() is not None or answers(port), timeout=60,
                 what="the gateway")
        assert process.poll() is None, process.stderr.read().decode() if process.stderr \
            else ""
        yield port
    finally:
        process.terminate()
        process.wait(timeout=20)
        assert hutch_cli("engine", "remote-credentials", "--name", name,
                         "--revoke").returncode == 0
