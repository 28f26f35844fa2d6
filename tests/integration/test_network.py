"""Sandbox networking: outbound access by default, loopback only with block_network, the
host and private ranges out of reach, allowlists, and a firewall the sandbox cannot change.

Traffic goes only to this machine's loopback and to the package registries.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hutch
from tests.helpers import kill_daemon, process_alive, wait_for

CONNECT = """
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), 5).close()
        print(target, "open")
    except OSError as exc:
        print(target, "closed", type(exc).__name__)
"""


def _connect(sb: hutch.Sandbox, *targets: str) -> dict[str, str]:
    p = sb.exec("python3", "-c", CONNECT, *targets)
    out = p.stdout.read()
    assert p.wait() == 0, p.stderr.read()
    return {line.split()[0]: line.split()[1] for line in out.splitlines()}


@pytest.fixture
def online(engine: dict[str, Any]) -> Iterator[hutch.Sandbox]:
    sb = hutch.Sandbox.create(timeout=120)
    yield sb
    sb.terminate()


def test_pip_download_works_by_default_and_not_without_network(
        online: hutch.Sandbox, engine: dict[str, Any]) -> None:
    p = online.exec("python3", "-m", "pip", "download", "--no-deps", "-q", "-d", "/tmp/d", "six")
    assert p.wait() == 0, p.stderr.read()[-2000:]
    assert "six" in " ".join(online.ls("/tmp/d"))
    blocked = hutch.Sandbox.create(block_network=True, timeout=60)
    try:
        p = blocked.exec("python3", "-m", "pip", "download", "--no-deps", "-d", "/tmp/d",
                         "--retries", "0", "--timeout", "5", "six")
        assert p.wait() != 0
    finally:
        blocked.terminate()


LOOPBACK_ECHO = """
import socket
server = socket.create_server(("127.0.0.1", 0))
client = socket.create_connection(server.getsockname(), 5)
conn, _ = server.accept()
client.sendall(b"ping")
print(conn.recv(4).decode(), open("/sys/class/net/lo/flags").read().strip())
"""


@pytest.mark.parametrize("block_network", [True, False])
def test_loopback_is_up_with_or_without_network(engine: dict[str, Any],
                                                block_network: bool) -> None:
    sb = hutch.Sandbox.create(block_network=block_network, timeout=60)
    try:
        p = sb.exec("python3", "-c", LOOPBACK_ECHO)
        out = p.stdout.read().split()
        assert p.wait() == 0, p.stderr.read()
        assert out[0] == "ping"
        assert int(out[1], 16) & 0x1  # IFF_UP
        interfaces = sorted(sb.ls("/sys/class/net"))
        assert interfaces == (["lo"] if block_network else ["lo", "tap0"])
    finally:
        sb.terminate()


def test_the_hosts_loopback_and_private_ranges_are_unreachable(online: hutch.Sandbox) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        try:
            accepted.append(listener.accept())
        except OSError:
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        result = _connect(online, f"10.0.2.2:{port}", f"127.0.0.1:{port}",
                          "169.254.169.254:80", "192.168.1.1:80", "10.0.0.1:80",
                          "172.16.0.1:80", "100.64.0.1:80")
        assert set(result.values()) == {"closed"}, result
    finally:
        listener.close()
        thread.join(timeout=10)
    assert accepted == []  # nothing from the sandbox ever reached the host's listener


def test_an_allowlist_admits_only_its_destinations(engine: dict[str, Any]) -> None:
    pypi = sorted({info[4][0] for info in socket.getaddrinfo("pypi.org", 443, socket.AF_INET)})
    target = f"{pypi[0]}:443"
    admitted = [f"{ip}/32" for ip in pypi]
    for allowlist, expected in (([*admitted, "10.0.2.3/32"], "open"), (admitted, "open"),
                                (["192.0.2.0/24"], "closed"), ([], "closed")):
        sb = hutch.Sandbox.create(outbound_cidr_allowlist=allowlist, timeout=60)
        try:
            assert _connect(sb, target)[target] == expected, allowlist
            if expected == "open":  # names resolve only where the resolver is admitted
                names = "open" if "10.0.2.3/32" in allowlist else "closed"
                assert _connect(sb, "pypi.org:443")["pypi.org:443"] == names, allowlist
        finally:
            sb.terminate()


def test_bad_allowlists() -> None:
    with pytest.raises(hutch.exception.InvalidError, match="not a CIDR"):
        hutch.Sandbox.create(outbound_cidr_allowlist=["nonsense"])
    with pytest.raises(hutch.exception.InvalidError, match="cannot be used when"):
        hutch.Sandbox.create(block_network=True, outbound_cidr_allowlist=["1.1.1.1/32"])
    with pytest.raises(hutch.exception.InvalidError, match="list of CIDR strings"):
        hutch.Sandbox.create(outbound_cidr_allowlist="1.1.1.1/32")  # type: ignore[arg-type]


def test_the_sandbox_cannot_change_its_network(engine: dict[str, Any]) -> None:
    image = hutch.Image.debian_slim().apt_install("nftables", "iproute2")
    sb = hutch.Sandbox.create(image=image, timeout=120)
    try:
        for command in ("nft flush ruleset", "ip link set tap0 down",
                        "ip route add 10.9.9.0/24 dev tap0"):
            p = sb.exec("sh", "-c", command)
            assert p.wait() != 0, command
            assert "not permitted" in p.stderr.read().lower(), command
        assert _connect(sb, "169.254.169.254:80")["169.254.169.254:80"] == "closed"
    finally:
        sb.terminate()


def test_network_survives_a_daemon_restart_and_ends_with_the_sandbox(
        engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create(timeout=120)
    pid_file = Path(engine["data_dir"]) / "sandboxes" / sb.object_id / "slirp4netns.pid"
    slirp = int(pid_file.read_text())
    assert process_alive(slirp)
    kill_daemon()
    again = hutch.Sandbox.from_id(sb.object_id)
    pypi = socket.getaddrinfo("pypi.org", 443, socket.AF_INET)[0][4][0]
    assert _connect(again, f"{pypi}:443")[f"{pypi}:443"] == "open"
    again.terminate()
    wait_for(lambda: not process_alive(slirp), timeout=20, what="slirp4netns to stop")


def test_an_http_server_is_reachable_through_its_tunnel(engine: dict[str, Any]) -> None:
    import httpx

    sb = hutch.Sandbox.create("python3", "-m", "http.server", "8000", "--directory", "/etc",
                              unencrypted_ports=[8000],
                              readiness_probe=hutch.Probe.with_tcp(8000), timeout=60)
    try:
        sb.wait_until_ready()
        tunnels = sb.tunnels()
        assert set(tunnels) == {8000}
        tunnel = tunnels[8000]
        assert tunnel.tcp_socket[0] == "127.0.0.1"
        response = httpx.get(f"{tunnel.url}/hostname", timeout=10)
        assert (response.status_code, response.text) == (200, f"{sb.object_id}\n")
        assert hutch.Sandbox.from_id(sb.object_id).tunnels()[8000] == tunnel  # any client
    finally:
        sb.terminate()
    assert sb.tunnels() == {}
    with pytest.raises(hutch.exception.InvalidError, match="port numbers"):
        hutch.Sandbox.create(unencrypted_ports=["80"])  # type: ignore[list-item]


def test_encrypted_ports_serve_tls_signed_by_the_engines_ca(
        engine: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ssl

    monkeypatch.setenv("HUTCH_TRUST_CA", "0")  # (this process: untrusted unless told,
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)  # whatever an earlier test trusted)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)

    import httpx

    from tests.helpers import hutch_cli

    ca = hutch_cli("engine", "ca")
    assert ca.returncode == 0 and b"BEGIN CERTIFICATE" in ca.stdout
    (tmp_path / "ca.pem").write_bytes(ca.stdout)
    verify = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    sb = hutch.Sandbox.create("python3", "-m", "http.server", "8443", "--directory", "/etc",
                              encrypted_ports=[8443],
                              readiness_probe=hutch.Probe.with_tcp(8443), timeout=60)
    try:
        sb.wait_until_ready()
        tunnel = sb.tunnels()[8443]
        assert tunnel.url.startswith("https://127.0.0.1:")
        with pytest.raises(hutch.exception.InvalidError, match="not configured"):
            tunnel.tcp_socket  # noqa: B018 - the property raises
        response = httpx.get(f"{tunnel.url}/hostname", verify=verify, timeout=10)
        assert (response.status_code, response.text) == (200, f"{sb.object_id}\n")
        with pytest.raises(httpx.ConnectError):  # not trusted without the engine's CA
            httpx.get(f"{tunnel.url}/hostname", timeout=10)
        kill_daemon()  # a new daemon serves TLS for the sandbox it adopts
        again = hutch.Sandbox.from_id(sb.object_id).tunnels()[8443]
        response = httpx.get(f"{again.url}/hostname", verify=verify, timeout=10)
        assert response.text == f"{sb.object_id}\n"
    finally:
        sb.terminate()
