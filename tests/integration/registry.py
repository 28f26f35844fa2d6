"""Debian's docker-registry, started by a test on a free loopback port: the registry the
image tests push to and pull from, as they would Docker Hub."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.helpers import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (tools/setup-host.sh installs it)")


@contextmanager
def serve_registry(root: Path, auth: str = "") -> Iterator[str]:
    """Debian's docker-registry on a free loopback port (``auth``: more of its config)."""
    need("docker-registry")
    port = free_port()
    config = root / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\n"
                      f"http:\n  addr: 127.0.0.1:{port}\n{auth}")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def answers() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code in (200,
                                                                                       401)
        except httpx.TransportError:
            return False

    try:
        wait_for(answers, timeout=30, what="the registry")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
