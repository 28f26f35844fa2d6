"""The kernel side of a private network: a network namespace of its own holding a bridge,
and a veth pair per member sandbox, one end on the bridge, the other the sandbox's ``eth0``.

Why a namespace per network, owned by the engine's user namespace: a rootless engine may
make bridges and veths only in namespaces its user namespace owns, and a namespace per
network keeps networks apart by construction (there is no route, no forwarding and no
address between two bridges: nothing to misconfigure), as podman's rootless netns does
for its bridges.  The bridge has no address, so a member reaches its peers and nothing
else: not the engine, not the host, not slirp4netns.  IPv6 is off in the network's
namespace and on every ``eth0``, so that no link-local address opens a way the sandbox's
firewall (IPv4 rules for the subnet) would not see.

The namespace is kept by a bind mount on a file of the engine's runtime directory, in the
mount namespace the pause process holds (:mod:`hutch.engine.pause`), as ``ip netns add``
keeps one: it outlives a restarted daemon, and goes with the engine.

Netlink sockets belong to the namespace of the thread that opens them, so each step runs
on a thread of its own that joins the namespace it works on and ends there (a rootless
engine may not join the host's namespace again): making a network takes about 2 ms,
joining a sandbox to it about 3 ms, both off the event loop.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from hutch.engine.errors import HostFault
from hutch.engine.kernel import linux

BRIDGE = "br0"
#: the sandbox's side of its veth pair
SANDBOX_INTERFACE = "eth0"


class BridgeSetupFailed(HostFault):
    pass


def _in_thread(work: Callable[[], None], what: str) -> None:
    """Run ``work`` on a thread of its own (which may join another network namespace and
    never leave it) and wait for it; its failure is raised here."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # handed to the caller
            failure.append(exc)

    thread = threading.Thread(target=run, name="hutch-bridge", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise BridgeSetupFailed(f"{what}: {failure[0]}") from failure[0]


#: IPv4 settings a new network namespace copies from the host's (``devconf_inherit_init_net``
#: 0): a host that forwards (Docker, Kubernetes), answers ARP for others or routes to
#: 127/8 would hand that to every member, whose ``eth0`` and ``tap0`` a forwarding
#: namespace would join into a way around its firewall.  Each is set off in the network's
#: namespace and in every member's, before its ``eth0`` comes up.
IPV4_OFF = ("forwarding", "route_localnet", "accept_source_route", "proxy_arp",
            "send_redirects", "accept_redirects")


def _ipv4_defaults(*interfaces: str) -> None:
    """The settings of :data:`IPV4_OFF` off on ``all``, ``default`` and ``interfaces`` of
    the calling thread's namespace; ARP answered only for an interface's own address."""
    for interface in ("all", "default", *interfaces):
        for name in IPV4_OFF:
            path = Path(f"/proc/sys/net/ipv4/conf/{interface}/{name}")
            if path.exists():
                path.write_text("0")
    for interface in interfaces:
        Path(f"/proc/sys/net/ipv4/conf/{interface}/arp_ignore").write_text("1")
        Path(f"/proc/sys/net/ipv4/conf/{interface}/arp_announce").write_text("2")


def _disable_ipv6(interface: str) -> None:
    """No IPv6 (and so no link-local address) on ``interface`` of the calling thread's
    namespace (``all``/``default`` for the namespace itself)."""
    path = Path(f"/proc/sys/net/ipv6/conf/{interface}/disable_ipv6")
    if path.exists():  # (a kernel without IPv6 has none to disable)
        path.write_text("1")


def make(path: Path) -> None:
    """A new network namespace with an up bridge and ``lo``, kept by a bind mount on
    ``path`` (made here: a file that must not exist yet)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.close(fd)

    def work() -> None:
        from pyroute2 import IPRoute

        linux.unshare(linux.CLONE_NEWNET)  # this thread only
        for scope in ("all", "default"):
            _disable_ipv6(scope)
        _ipv4_defaults()
        with IPRoute() as ipr:
            ipr.link("add", ifname=BRIDGE, kind="bridge")
            for name in ("lo", BRIDGE):
                (index,) = ipr.link_lookup(ifname=name)
                ipr.link("set", index=index, state="up")
        linux.mount("/proc/thread-self/ns/net", str(path), None, linux.MS_BIND)

    try:
        _in_thread(work, "could not make the network's namespace")
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def alive(path: Path) -> bool:
    """Whether ``path`` still holds a network namespace (a bind mount of one: after the
    engine's mount namespace ended, it is the empty file it was mounted on)."""
    try:
        return os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return False


def remove(path: Path) -> None:
    """Let go of the namespace on ``path`` (it ends with its last veth) and the file."""
    if alive(path):
        linux.umount(str(path), linux.MNT_DETACH)
    path.unlink(missing_ok=True)


def join(network: Path, sandbox_netns: int, host_interface: str, address: str,
         prefixlen: int) -> None:
    """Connect the sandbox whose network namespace is the descriptor ``sandbox_netns`` to
    the network kept on ``network``: a veth pair made in the sandbox's namespace as
    ``eth0`` (``address``/``prefixlen``, no IPv6) with its peer, ``host_interface``, made
    in the network's and put on its bridge."""
    network_fd = os.open(network, os.O_RDONLY | os.O_CLOEXEC)
    try:
        def inside_sandbox() -> None:
            from pyroute2 import IPRoute

            linux.setns(sandbox_netns, linux.CLONE_NEWNET)
            with IPRoute() as ipr:
                ipr.link("add", ifname=SANDBOX_INTERFACE, kind="veth",
                         peer={"ifname": host_interface, "net_ns_fd": network_fd})
                _disable_ipv6(SANDBOX_INTERFACE)
                _ipv4_defaults(SANDBOX_INTERFACE)
                (index,) = ipr.link_lookup(ifname=SANDBOX_INTERFACE)
                ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
                ipr.link("set", index=index, state="up")

        def inside_network() -> None:
            from pyroute2 import IPRoute

            linux.setns(network_fd, linux.CLONE_NEWNET)
            with IPRoute() as ipr:
                (bridge,) = ipr.link_lookup(ifname=BRIDGE)
                (index,) = ipr.link_lookup(ifname=host_interface)
                ipr.link("set", index=index, master=bridge, state="up")

        _in_thread(inside_sandbox, "could not give the sandbox its network interface")
        _in_thread(inside_network, "could not connect the sandbox to its network's bridge")
    finally:
        os.close(network_fd)


def leave(network: Path, host_interface: str) -> None:
    """Delete a member's veth pair (both ends) from the network's side, so its address is
    free at once, whether or not its sandbox's namespace has ended yet."""
    if not alive(network):
        return
    network_fd = os.open(network, os.O_RDONLY | os.O_CLOEXEC)
    try:
        def work() -> None:
            from pyroute2 import IPRoute

            linux.setns(network_fd, linux.CLONE_NEWNET)
            with IPRoute() as ipr:
                for index in ipr.link_lookup(ifname=host_interface):
                    ipr.link("del", index=index)

        _in_thread(work, "could not disconnect a sandbox from its network")
    finally:
        os.close(network_fd)
