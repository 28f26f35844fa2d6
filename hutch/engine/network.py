"""Sandbox networking: loopback only, or outbound access through slirp4netns, filtered.

Every sandbox has its own network namespace.  With network access, the engine (root in its
user namespace, which owns the sandbox's network namespace) does two things before the
sandbox's process starts:

1. loads an nftables ruleset into the namespace (:mod:`hutch.engine.netns`, libnftables) that
   rejects what a sandbox must not reach: the host's loopback, private and link-local
   ranges (the 169.254.169.254 metadata address among them), multicast, IPv6 - or, with an
   allowlist, everything but the allowlisted networks.  The sandbox holds no
   CAP_NET_ADMIN, so it cannot change these rules;
2. starts slirp4netns, a user-mode network stack (``--configure`` sets up ``tap0``,
   10.0.2.100/24 and the route; 10.0.2.3 is its DNS forwarder; ``--disable-host-loopback``
   keeps 10.0.2.2 from reaching the host's 127.0.0.1).

slirp4netns outlives a restarted daemon (its pid is kept in the sandbox's directory) and
is stopped when the sandbox ends.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

import trio

from hutch.engine.errors import Invalid

SLIRP_DNS = "10.0.2.3"
#: Destinations a sandbox never reaches unless they are allowlisted.
BLOCKED_V4 = ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
              "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15",
              "224.0.0.0/4", "240.0.0.0/4"]
PID_FILE = "slirp4netns.pid"
API_SOCKET = "slirp4netns.sock"
TUNNELS_FILE = "tunnels.json"
GUEST_ADDR = "10.0.2.100"


#: The host's CA bundle, which sandboxes with network access trust as their own.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def host_trust(rootfs: Path) -> dict[str, str]:
    """Bind the host's CA bundle over the image's (when the image has one), so TLS through
    a TLS-inspecting proxy the host trusts works in the sandbox as it does on the host."""
    image_bundle = rootfs / str(HOST_CA_BUNDLE).lstrip("/")
    if HOST_CA_BUNDLE.is_file() and image_bundle.is_file() and not image_bundle.is_symlink():
        return {str(HOST_CA_BUNDLE): str(HOST_CA_BUNDLE)}
    return {}


class NetworkSetupFailed(Invalid):
    pass


def check_allowlist(cidrs: list[str]) -> list[str]:
    """The allowlist as normalized IPv4 networks (``InvalidError`` for anything else)."""
    networks = []
    for cidr in cidrs:
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise Invalid(f"outbound_cidr_allowlist: {cidr!r} is not a CIDR") from exc
        if net.version != 4:
            raise Invalid(f"outbound_cidr_allowlist: {cidr!r}: sandboxes have IPv4 only")
        networks.append(str(net))
    return networks


def ruleset(allowlist: list[str] | None) -> str:
    """The nftables ruleset of a sandbox with network access."""
    lines = [
        "table inet hutch {",
        "  chain output {",
        "    type filter hook output priority 0; policy accept;",
        '    oifname "lo" accept',
        "    ct state established,related accept",
        f"    ip daddr {SLIRP_DNS} udp dport 53 accept",
        f"    ip daddr {SLIRP_DNS} tcp dport 53 accept",
        "    meta nfproto ipv6 reject",
    ]
    if allowlist is None:
        lines.append(f"    ip daddr {{ {', '.join(BLOCKED_V4)} }} reject")
    else:
        if allowlist:
            lines.append(f"    ip daddr {{ {', '.join(allowlist)} }} accept")
        lines.append("    reject")
    lines += ["  }", "}", ""]
    return "\n".join(lines)


async def attach(netns_path: str, sandbox_dir: Path) -> None:
    """Connect the network namespace at ``netns_path`` (the engine's, for a sandbox not
    started yet): start slirp4netns for it and wait until it says it is ready.  The
    firewall is loaded from inside by :mod:`hutch.engine.netns`."""
    ready_r, ready_w = os.pipe()
    try:
        pid_slirp = os.posix_spawnp("slirp4netns", [
            "slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback",
            "--ready-fd=3", f"--api-socket={sandbox_dir / API_SOCKET}",
            "--netns-type=path", netns_path, "tap0",
        ], os.environ, file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                     (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                                     (os.POSIX_SPAWN_DUP2, ready_w, 3)],
            setsid=True)
    except FileNotFoundError as exc:
        os.close(ready_r)
        raise NetworkSetupFailed("slirp4netns is not installed: apt-get install slirp4netns") \
            from exc
    finally:
        os.close(ready_w)
    (sandbox_dir / PID_FILE).write_text(str(pid_slirp))
    try:
        os.set_blocking(ready_r, False)
        with trio.fail_after(10):
            await trio.lowlevel.wait_readable(ready_r)
        ready = os.read(ready_r, 1)
    except trio.TooSlowError as exc:
        raise NetworkSetupFailed("slirp4netns did not become ready within 10 s") from exc
    finally:
        os.close(ready_r)
    if ready != b"1":
        raise NetworkSetupFailed("slirp4netns failed to set up the sandbox's network")


async def detach(sandbox_dir: Path) -> None:
    """Stop the sandbox's slirp4netns, if it has one (and reap it when it is our child; one
    started by an earlier daemon is reaped by the pause process)."""
    try:
        pid = int((sandbox_dir / PID_FILE).read_text())
    except (OSError, ValueError):
        return
    try:
        if b"slirp4netns" in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGTERM)
            await trio.to_thread.run_sync(os.waitpid, pid, 0)
    except (OSError, ChildProcessError):
        pass
    (sandbox_dir / PID_FILE).unlink(missing_ok=True)


async def _slirp_call(sandbox_dir: Path, request: dict[str, object]) -> dict[str, object]:
    """One request to slirp4netns's API socket (JSON in, JSON out)."""
    stream = await trio.open_unix_socket(str(sandbox_dir / API_SOCKET))
    async with stream:
        await stream.send_all(json.dumps(request).encode())
        await stream.send_eof()
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    answer: dict[str, object] = json.loads(data or b"{}")
    return answer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def forward(sandbox_dir: Path, guest_port: int) -> int:
    """Forward an ephemeral port of the host's 127.0.0.1 to ``guest_port`` in the sandbox;
    returns the host port."""
    for _ in range(5):
        host_port = _free_port()
        answer = await _slirp_call(sandbox_dir, {"execute": "add_hostfwd", "arguments": {
            "proto": "tcp", "host_addr": "127.0.0.1", "host_port": host_port,
            "guest_addr": GUEST_ADDR, "guest_port": guest_port}})
        if "error" not in answer:
            return host_port
    raise NetworkSetupFailed(f"could not forward a host port to sandbox port {guest_port}: "
                             f"{answer.get('error')}")


def record_tunnel(sandbox_dir: Path, guest_port: int, host_port: int, *, tls: bool,
                  plain_port: int) -> None:
    """Remember a forward for later clients (and for a restarted daemon's TLS proxies)."""
    tunnels = tunnels_of(sandbox_dir)
    tunnels[guest_port] = {"host_port": host_port, "tls": tls, "plain_port": plain_port}
    (sandbox_dir / TUNNELS_FILE).write_text(json.dumps(tunnels))


def tunnels_of(sandbox_dir: Path) -> dict[int, dict[str, Any]]:
    """Sandbox port -> ``{"host_port", "tls", "plain_port"}`` of its 127.0.0.1 forward."""
    try:
        return {int(k): dict(v) for k, v in
                json.loads((sandbox_dir / TUNNELS_FILE).read_text()).items()}
    except (OSError, ValueError, TypeError):
        return {}
