"""The host's own addresses and the networks it is directly attached to, read from the
kernel when a sandbox is made, so that the sandbox's firewall can refuse them.

Why: slirp4netns connects out from the host's network namespace, so a sandbox naming one of
the host's addresses (``192.0.2.2``, or ``::ffff:192.0.2.2``) reaches the host itself, and
one naming an address of the host's LAN reaches the LAN; neither is a range a constant list
could name.  So the engine asks the kernel at every creation, with one rtnetlink dump of
addresses and one of routes on a socket of its own (about 0.5 ms, parsing included; 2-5 ms
through pyroute2).
Details: docs/design.md, "Networking"; docs/security.md, "Networking defaults".
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from hutch.engine.errors import Invalid

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NLMSG_HEADER = struct.Struct("=LHHLL")
_RTA_HEADER = struct.Struct("=HH")
_IFADDRMSG = struct.Struct("=BBBBL")
_RTMSG = struct.Struct("=BBBBBBBBL")
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_RTM_GETADDR, _RTM_GETROUTE = 22, 26
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_RTA_DST, _RTA_GATEWAY, _RTA_MULTIPATH, _RTA_TABLE = 1, 5, 9, 15
_RTN_UNICAST = 1
_RT_TABLE_LOCAL = 255
#: how long a dump may take before the sandbox's creation fails (it takes well under 1 ms)
DUMP_TIMEOUT = 5.0


class HostNetworkUnknown(Invalid):
    """The kernel would not say which addresses the host has (no sandbox may go online
    without knowing)."""


@dataclass(frozen=True)
class HostNetworks:
    """What a sandbox must not reach of the host: its addresses (never), and the networks
    it is directly attached to (unless an allowlist admits them)."""

    addresses: tuple[IPAddress, ...]
    attached: tuple[IPNetwork, ...]


def _dump(request_type: int, body: bytes) -> list[bytes]:
    """The payloads of one rtnetlink dump."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       0) as sock:  # NETLINK_ROUTE
        sock.settimeout(DUMP_TIMEOUT)
        sock.bind((0, 0))
        sock.send(_NLMSG_HEADER.pack(_NLMSG_HEADER.size + len(body), request_type,
                                     _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0) + body)
        payloads: list[bytes] = []
        while True:
            data = sock.recv(1 << 17)
            offset = 0
            while offset + _NLMSG_HEADER.size <= len(data):
                length, kind, _flags, _seq, _pid = _NLMSG_HEADER.unpack_from(data, offset)
                if length < _NLMSG_HEADER.size:
                    raise HostNetworkUnknown(f"a malformed netlink message ({length} bytes)")
                if kind == _NLMSG_DONE:
                    return payloads
                if kind == _NLMSG_ERROR:
                    (error,) = struct.unpack_from("=i", data, offset + _NLMSG_HEADER.size)
                    raise HostNetworkUnknown(f"rtnetlink dump refused: {os.strerror(-error)}")
                payloads.append(data[offset + _NLMSG_HEADER.size:offset + length])
                offset += (length + 3) & ~3


def _attributes(payload: bytes, offset: int) -> dict[int, bytes]:
    found = {}
    while offset + _RTA_HEADER.size <= len(payload):
        length, kind = _RTA_HEADER.unpack_from(payload, offset)
        if length < _RTA_HEADER.size:
            break
        found[kind & 0x3FFF] = payload[offset + _RTA_HEADER.size:offset + length]
        offset += (length + 3) & ~3
    return found


def _address(family: int, raw: bytes) -> IPAddress:
    return ipaddress.ip_address(raw[:4] if family == socket.AF_INET else raw[:16])


def _network(family: int, raw: bytes, prefixlen: int) -> IPNetwork:
    return ipaddress.ip_network((_address(family, raw), prefixlen), strict=False)


def read() -> HostNetworks:
    """The host's addresses (every interface, IPv4 and IPv6) and directly attached
    networks, as the kernel has them now."""
    addresses: set[IPAddress] = set()
    attached: set[IPNetwork] = set()
    try:
        for payload in _dump(_RTM_GETADDR, _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
            family, prefixlen, _flags, _scope, _index = _IFADDRMSG.unpack_from(payload)
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            attrs = _attributes(payload, _IFADDRMSG.size)
            # IFA_LOCAL is the host's own address; IFA_ADDRESS the same, or on a
            # point-to-point link, its peer
            for kind in (_IFA_LOCAL, _IFA_ADDRESS):
                if kind in attrs:
                    attached.add(_network(family, attrs[kind], prefixlen))
            own = attrs.get(_IFA_LOCAL, attrs.get(_IFA_ADDRESS))
            if own is not None:
                addresses.add(_address(family, own))
        for payload in _dump(_RTM_GETROUTE, _RTMSG.pack(socket.AF_UNSPEC, *[0] * 8)):
            family, dst_len, _src, _tos, table, _proto, _scope, kind, _f = \
                _RTMSG.unpack_from(payload)
            attrs = _attributes(payload, _RTMSG.size)
            if _RTA_TABLE in attrs:
                (table,) = struct.unpack("=I", attrs[_RTA_TABLE][:4])
            if (family not in (socket.AF_INET, socket.AF_INET6) or kind != _RTN_UNICAST
                    or table == _RT_TABLE_LOCAL or dst_len == 0 or _RTA_DST not in attrs
                    or _RTA_GATEWAY in attrs or _RTA_MULTIPATH in attrs):
                continue
            attached.add(_network(family, attrs[_RTA_DST], dst_len))
    except (OSError, ValueError, struct.error) as exc:
        raise HostNetworkUnknown(f"could not read the host's addresses: {exc}") from exc
    return HostNetworks(tuple(sorted(addresses, key=_sort_key)),
                        tuple(sorted(attached, key=_sort_key)))


def _sort_key(item: IPAddress | IPNetwork) -> tuple[int, str]:
    return item.version, str(item)


def view() -> HostNetworks | None:
    """:func:`read`, or None when the kernel would not say (a sandbox made ahead of time
    against an unknown view is never handed out: :mod:`hutch.engine.lifecycle.reserve`)."""
    try:
        return read()
    except HostNetworkUnknown:
        return None


#: What a sandbox made ahead of time was made against: the host's networks, and the
#: identity (device, inode, size, mtime) of each file :class:`Views` watches (None: absent).
Snapshot = tuple[HostNetworks | None, tuple[tuple[int, int, int, int] | None, ...]]


class Views:
    """What the host's networks were when each sandbox made ahead of time (a warm pool's,
    the reserve's) got its firewall, which refuses the host's addresses and networks *as
    they were then*, and what the ``files`` it was given (the host's CA bundle, bound into
    it) were then.  A take checks them now: a host that gained a network since (a VPN, a
    LAN: reachable by a sandbox whose firewall predates it), or whose CA bundle changed (a
    CA distrusted since would still be trusted in it), makes every such sandbox stale, and
    the create makes a fresh one.  Found by tests/root/test_root_network.py, whose test LAN
    appeared after the reserve filled."""

    def __init__(self, files: tuple[Path, ...] = ()) -> None:
        self.files = files
        self.seen: dict[str, Snapshot] = {}

    def snapshot(self) -> Snapshot:
        """The host now (taken before a sandbox is made, for :meth:`made`)."""
        return view(), tuple(_identity(path) for path in self.files)

    def made(self, sandbox_id: str, before: Snapshot) -> bool:
        """Record a sandbox made between ``before`` and now; False (not to be handed
        out) when the host changed meanwhile or its networks are unknown."""
        if before[0] is None or self.snapshot() != before:
            return False
        self.seen[sandbox_id] = before
        return True

    def current(self, sandbox_id: str) -> bool:
        """Whether the sandbox still matches the host."""
        seen = self.seen.get(sandbox_id)
        return seen is not None and self.snapshot() == seen

    def forget(self, sandbox_id: str) -> None:
        self.seen.pop(sandbox_id, None)


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns
