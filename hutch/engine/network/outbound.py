"""Sandbox networking: loopback only, or outbound access through slirp4netns, filtered.

Why a firewall in front of slirp4netns: slirp4netns opens the sandbox's connections from the
host's network namespace, so any address the host answers on is the host, and its
``--disable-host-loopback`` covers only its alias 10.0.2.2.  Before the sandbox's process
starts, the engine loads :func:`ruleset` into the sandbox's network namespace, where the
sandbox (no CAP_NET_ADMIN) cannot change it: it refuses every address of the host and
10.0.2.0/24 always, by default also the host's networks, private, link-local
(169.254.169.254) and reserved ranges and all of IPv6, and with ``outbound_cidr_allowlist``
everything else, DNS to 10.0.2.3 (a channel out) included unless the allowlist holds it.
Details: docs/security.md, "Networking defaults"; docs/design.md, "Networking".
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from hutch.engine.errors import HostFault, Invalid
from hutch.engine.kernel import proctree
from hutch.engine.network import hostnet

SLIRP_DNS = "10.0.2.3"
#: slirp4netns's own network: 10.0.2.2 is its alias of the host, 10.0.2.3 its DNS
#: forwarder, 10.0.2.100 the sandbox
SLIRP_NETWORK = "10.0.2.0/24"
#: Destinations a sandbox never reaches unless they are allowlisted (besides the networks
#: the host is attached to, read at creation).
BLOCKED_V4 = ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
              "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15",
              "224.0.0.0/4", "240.0.0.0/4"]
#: IPv6 destinations named before IPv6 is refused altogether, so that the rules still say
#: what matters if it is ever let through: loopback and IPv4-compatible (``::/96``),
#: IPv4-mapped, NAT64 (well-known and local-use), Teredo and 6to4 forms (which embed an
#: IPv4 address, the host's among them), ULA, link-local and multicast.
BLOCKED_V6 = ["::/96", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "2001::/32",
              "2002::/16", "fc00::/7", "fe80::/10", "ff00::/8"]
PID_FILE = "slirp4netns.pid"
#: slirp4netns's API socket: unused by the engine, but on its command line it names the
#: sandbox a slirp4netns belongs to (:mod:`hutch.engine.storage.remains`)
API_SOCKET = "slirp4netns.sock"
TUNNELS_FILE = "tunnels.json"


#: The host's CA bundle, which sandboxes with network access trust as their own.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def host_trust(rootfs: Path, bundle: Path = HOST_CA_BUNDLE) -> dict[str, str]:
    """Bind the host's CA bundle (or ``bundle``, made of it) over the image's (when the
    image has one), so TLS through a TLS-inspecting proxy the host trusts works in the
    sandbox as it does on the host."""
    image_bundle = rootfs / str(HOST_CA_BUNDLE).lstrip("/")
    if bundle.is_file() and image_bundle.is_file() and not image_bundle.is_symlink():
        return {str(HOST_CA_BUNDLE): str(bundle)}
    return {}


class NetworkSetupFailed(HostFault):
    pass


#: Networks an allowlist may name: each is an element of the sandbox's firewall, which
#: libnftables builds at every create (a request of 1 MiB could otherwise name 60,000).
ALLOWLIST_MAX = 1024


def check_allowlist(cidrs: list[str]) -> list[str]:
    """The allowlist as normalized IPv4 networks (``InvalidError`` for anything else)."""
    if len(cidrs) > ALLOWLIST_MAX:
        raise Invalid(f"outbound_cidr_allowlist: {len(cidrs)} networks; at most "
                      f"{ALLOWLIST_MAX} (merge them into wider CIDRs)")
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


def dns_allowed(allowlist: list[str] | None) -> bool:
    """Whether the sandbox may query slirp4netns's DNS forwarder: by default yes; with an
    allowlist only if it holds 10.0.2.3 (the forwarder passes queries on to the host's
    resolver, and so to any name server: data can leave in the names asked)."""
    if allowlist is None:
        return True
    dns = ipaddress.ip_address(SLIRP_DNS)
    return any(dns in ipaddress.ip_network(net) for net in allowlist)


def _nft_set(networks: list[Any]) -> str:
    """An nftables anonymous set (nft merges the overlapping elements of one)."""
    return "{ " + ", ".join(map(str, networks)) + " }"


def ruleset(allowlist: list[str] | None, host: hostnet.HostNetworks | None = None, *,
            private: str | None = None) -> str:
    """The nftables ruleset of a sandbox with network access; ``host`` (read from the
    kernel now when not given) names the host's addresses and attached networks;
    ``private``: the subnet of its private network (reached on its ``eth0`` only)."""
    if host is None:
        host = hostnet.read()
    own4 = [a for a in host.addresses if a.version == 4]
    own6 = [a for a in host.addresses if a.version == 6]
    attached4 = [n for n in host.attached if n.version == 4]
    attached6 = [n for n in host.attached if n.version == 6]
    lines = [
        "table inet hutch {",
        "  chain output {",
        "    type filter hook output priority 0; policy accept;",
        '    oifname "lo" accept',
        "    ct state established,related accept",
    ]
    if private is not None:
        lines.append(f'    oifname "eth0" ip daddr {ipaddress.ip_network(private)} accept')
    if dns_allowed(allowlist):
        lines += [f"    ip daddr {SLIRP_DNS} udp dport 53 accept",
                  f"    ip daddr {SLIRP_DNS} tcp dport 53 accept"]
    lines += [
        # never, allowlist or not: the host itself (and slirp4netns's alias of it)
        f"    ip daddr {_nft_set([SLIRP_NETWORK, *own4])} reject",
        f"    ip6 daddr {_nft_set([*BLOCKED_V6, *own6, *attached6])} reject",
        "    meta nfproto ipv6 reject",
    ]
    if allowlist is None:
        lines.append(f"    ip daddr {_nft_set([*BLOCKED_V4, *attached4])} reject")
    else:
        if allowlist:
            lines.append(f"    ip daddr {_nft_set(allowlist)} accept")
        lines.append("    reject")
    # nothing passes through a sandbox's namespace (between a private network's eth0 and
    # tap0, were forwarding ever on: bridges.IPV4_OFF)
    lines += ["  }", "  chain forward {", "    type filter hook forward priority 0; policy drop;",
              "  }", "}", ""]
    return "\n".join(lines)


#: slirp4netns parses every packet a sandbox sends, so a bug in it is reached from the
#: sandbox.  As podman starts it: in a mount namespace of its own that shows only /etc and
#: /run of the host, with all capabilities dropped but CAP_NET_BIND_SERVICE (it runs as
#: root of the engine's user namespace), and under its own seccomp filter.
SLIRP_CONFINEMENT = ("--enable-sandbox", "--enable-seccomp")


def _slirp_env() -> dict[str, str]:
    """slirp4netns's environment: a PATH, not the engine's (which came from the client
    that started it, with whatever secrets that shell held)."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}


async def attach(netns_path: str, sandbox_dir: Path) -> None:
    """Connect the network namespace at ``netns_path`` (the engine's, for a sandbox not
    started yet): start slirp4netns for it and wait until it says it is ready.  The
    firewall is loaded from inside by :mod:`hutch.engine.network.netns`."""
    ready_r, ready_w = os.pipe()
    try:
        pid_slirp = os.posix_spawnp("slirp4netns", [
            "slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback",
            *SLIRP_CONFINEMENT, "--ready-fd=3", f"--api-socket={sandbox_dir / API_SOCKET}",
            "--netns-type=path", netns_path, "tap0",
        ], _slirp_env(), file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
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


#: Seconds slirp4netns has to leave after SIGTERM before it is killed.
STOP_GRACE = 5.0


def slirp_of(sandbox_dir: Path) -> Callable[[int], bool]:
    """A check that a pid is the slirp4netns of this sandbox (its API socket is the
    sandbox's own, which no other process names)."""
    wanted = f"--api-socket={sandbox_dir / API_SOCKET}".encode()

    def belongs(pid: int) -> bool:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return bool(argv) and argv[0].endswith(b"slirp4netns") and wanted in argv

    return belongs


async def detach(sandbox_dir: Path) -> None:
    """Stop the sandbox's slirp4netns, if it has one: through a pidfd, once the pid was
    seen to be that slirp4netns (a pid file may outlive its process, and its pid be
    another's by now), and reaped when it is our child (one started by an earlier daemon
    is reaped by the pause process)."""
    try:
        pid = int((sandbox_dir / PID_FILE).read_text())
    except (OSError, ValueError):
        return
    pidfd = proctree.pin_if(pid, slirp_of(sandbox_dir))
    if pidfd is not None:
        try:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                signal.pidfd_send_signal(pidfd, signal.SIGTERM)
            with trio.move_on_after(STOP_GRACE):
                await trio.lowlevel.wait_readable(pidfd)
            if not proctree.exited(pidfd):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                await trio.lowlevel.wait_readable(pidfd)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # it has exited: no wait
        finally:
            os.close(pidfd)
    (sandbox_dir / PID_FILE).unlink(missing_ok=True)


def record_tunnel(sandbox_dir: Path, guest_port: int, host_port: int, *, tls: bool) -> None:
    """Remember a tunnel for later clients (and for a restarted daemon's listeners)."""
    tunnels = tunnels_of(sandbox_dir)
    tunnels[guest_port] = {"host_port": host_port, "tls": tls}
    (sandbox_dir / TUNNELS_FILE).write_text(json.dumps(tunnels))


def tunnels_of(sandbox_dir: Path) -> dict[int, dict[str, Any]]:
    """Sandbox port -> ``{"host_port", "tls"}`` of the engine's 127.0.0.1 listener for it."""
    try:
        return {int(k): dict(v) for k, v in
                json.loads((sandbox_dir / TUNNELS_FILE).read_text()).items()}
    except (OSError, ValueError, TypeError):
        return {}
