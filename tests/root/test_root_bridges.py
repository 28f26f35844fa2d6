"""A private network's kernel side (root: the test looks into the namespaces with
``nsenter``): a namespace with a bridge kept by a bind mount, two sandbox namespaces joined
to it that reach each other, and nothing else on the bridge's side."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from hutch.engine.commands.zygote import ForkServer
from hutch.engine.network import bridges

LISTEN = "import socket; s = socket.socket(); s.bind(('0.0.0.0', 7000)); s.listen(); " \
    "print('ready', flush=True); c, peer = s.accept(); print(peer[0], flush=True)"


async def _prepare() -> int:
    server = ForkServer(0, None)
    try:
        async with trio.open_nursery() as nursery:
            fd: int = (await nursery.start(server.network_namespace, None)).net
    finally:
        server.stop()
    return fd


def _in(path: str, *argv: str) -> str:
    return subprocess.run(["nsenter", f"--net={path}", *argv], capture_output=True,
                          text=True, check=True).stdout


def _fd_path(fd: int) -> str:
    return f"/proc/{os.getpid()}/fd/{fd}"


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "net.netns"
    bridges.make(path)
    yield path
    bridges.remove(path)


def test_make_keeps_a_namespace_with_an_addressless_bridge(network: Path) -> None:
    assert bridges.alive(network)
    links = _in(str(network), "ip", "-o", "link", "show")
    assert sorted(line.split(":")[1].strip() for line in links.splitlines()) == ["br0", "lo"]
    addresses = _in(str(network), "ip", "-o", "addr", "show", "dev", "br0")
    assert "inet" not in addresses  # no IPv4, no IPv6 link-local
    with pytest.raises(FileExistsError):
        bridges.make(network)


def test_joined_sandboxes_reach_each_other_and_leave(network: Path) -> None:
    first, second = trio.run(_prepare), trio.run(_prepare)
    try:
        bridges.join(network, first, "m2", "10.89.0.2", 24)
        bridges.join(network, second, "m3", "10.89.0.3", 24)
        eth0 = _in(_fd_path(first), "ip", "-o", "addr", "show", "dev", "eth0")
        assert "inet 10.89.0.2/24" in eth0 and "inet6" not in eth0
        ports = _in(str(network), "ip", "-o", "link", "show", "master", "br0")
        assert sorted(line.split(":")[1].strip().split("@")[0]
                      for line in ports.splitlines()) == ["m2", "m3"]
        server = subprocess.Popen(["nsenter", f"--net={_fd_path(first)}", sys.executable,
                                   "-c", LISTEN], stdout=subprocess.PIPE, text=True,
                                  pass_fds=(first,))
        try:
            assert server.stdout is not None
            assert server.stdout.readline().strip() == "ready"
            _in(_fd_path(second), sys.executable, "-c",
                "import socket; socket.create_connection(('10.89.0.2', 7000), 5).close()")
            assert server.stdout.readline().strip() == "10.89.0.3"
        finally:
            server.kill()
            server.wait()
        bridges.leave(network, "m2")
        assert "eth0" not in _in(_fd_path(first), "ip", "-o", "link", "show")
        assert "m2" not in _in(str(network), "ip", "-o", "link", "show")
    finally:
        os.close(first)
        os.close(second)


def test_remove_lets_the_namespace_go(tmp_path: Path) -> None:
    path = tmp_path / "gone.netns"
    bridges.make(path)
    bridges.remove(path)
    assert not path.exists() and not bridges.alive(path)
    bridges.leave(path, "m2")  # a network gone: nothing to do
