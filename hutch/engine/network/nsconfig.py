"""Configuring a sandbox's network namespace from inside it: its loopback up, then its
firewall loaded with libnftables.  Standard library only: the engine's fork server
(:mod:`hutch.engine.commands.forkserver`) runs it in a child forked for the purpose, which
made the namespace (``unshare``) or joined it, and ends when it is configured.

Why not in the daemon, where it ran on a thread of its own: libnftables waits on its
netlink socket with ``select()``, which aborts the process (glibc's fortify check, exit
134) once that socket's number is 1024 or more; a daemon holds about 3 descriptors per
sandbox, so it could not run 300.  The fork server's children hold a handful.  It also
takes the work off the daemon's interpreter: pyroute2's netlink messages were about
1 ms of its CPU per create.

Why ``ioctl`` for the loopback: two calls on a socket of the namespace, where a netlink
library would be a dependency the fork server cannot import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import functools
import socket
import struct

LOOPBACK = "lo"
LOOPBACK_ADDRESS = "127.0.0.1"
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCGIFADDR = 0x8915
SIOCSIFADDR = 0x8916
IFF_UP = 0x1
#: ``struct ifreq``: the name, then a 24-byte union (flags, or a ``sockaddr_in``)
IFREQ_FLAGS = struct.Struct("16sH22x")
IFREQ_ADDR = struct.Struct("16sH2s4s16x")


class ConfigError(Exception):
    """A step failed; the message names it."""


@functools.lru_cache(maxsize=1)
def _nftables() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("nftables") or "libnftables.so.1")
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    return lib


def preload() -> None:
    """Load libnftables now (once, in the fork server, whose children share it), so the
    first sandbox does not pay for it; a host without it fails at the first firewall."""
    try:
        _nftables()
    except OSError:
        pass


def loopback_up() -> None:
    """Bring the calling process's ``lo`` up, with 127.0.0.1/8 (which the kernel gives a
    loopback as it comes up; set here where it did not)."""
    name = LOOPBACK.encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            got = fcntl.ioctl(sock, SIOCGIFFLAGS, IFREQ_FLAGS.pack(name, 0))
            flags = IFREQ_FLAGS.unpack(got)[1]
            fcntl.ioctl(sock, SIOCSIFFLAGS, IFREQ_FLAGS.pack(name, flags | IFF_UP))
        except OSError as exc:
            raise ConfigError(f"bringing the loopback up: {exc.strerror}") from exc
        try:
            fcntl.ioctl(sock, SIOCGIFADDR, IFREQ_ADDR.pack(name, socket.AF_INET, b"", b""))
            return
        except OSError as exc:
            if exc.errno != errno.EADDRNOTAVAIL:
                raise ConfigError(f"reading the loopback's address: {exc.strerror}") \
                    from exc
        address = IFREQ_ADDR.pack(name, socket.AF_INET, b"", socket.inet_aton(LOOPBACK_ADDRESS))
        try:
            fcntl.ioctl(sock, SIOCSIFADDR, address)  # (class A: a /8)
        except OSError as exc:
            raise ConfigError(f"giving the loopback its address: {exc.strerror}") from exc


def load_firewall(ruleset: str) -> None:
    """Load the nftables ``ruleset`` into the calling process's network namespace."""
    try:
        lib = _nftables()
    except OSError as exc:
        raise ConfigError(f"libnftables is missing ({exc}): apt-get install nftables") \
            from exc
    ctx = lib.nft_ctx_new(0)
    if not ctx:
        raise ConfigError("nft_ctx_new failed")
    try:
        lib.nft_ctx_buffer_error(ctx)
        if lib.nft_run_cmd_from_buffer(ctx, ruleset.encode()) != 0:
            error = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
            raise ConfigError(f"could not load the sandbox's firewall: {error.strip()}")
    finally:
        lib.nft_ctx_free(ctx)


def configure(firewall: str | None) -> None:
    """Configure the calling process's network namespace: ``lo``, then the ``firewall``
    ruleset, if any."""
    loopback_up()
    if firewall is not None:
        load_firewall(firewall)
