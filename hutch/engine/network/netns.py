"""A sandbox's network namespace, made and configured by the engine before the runtime joins it.

Why the engine makes it: set up beside ``crun create`` rather than after it (which took
5.5-7 ms), the namespace is ready by the time the container is, ``lo`` up with 127.0.0.1/8
on every runtime and the firewall loaded with libnftables (no ``nsenter``/``nft`` processes:
about 6 ms each).  Netlink sockets belong to the namespace of the thread that opens them, so
the work runs on a thread of its own that unshares and never returns to the host's
namespace; a descriptor the engine holds keeps the namespace until the runtime has joined.
Details: docs/design.md, "Networking".
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import socket
import threading
from collections.abc import Callable

import trio

from hutch.engine.errors import HostFault
from hutch.engine.kernel import linux

LOOPBACK_ADDRESS = "127.0.0.1"


class NetnsSetupFailed(HostFault):
    pass


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


def _load_firewall(ruleset: str) -> None:
    """Load ``ruleset`` into the calling thread's network namespace."""
    try:
        lib = _nftables()
    except OSError as exc:
        raise NetnsSetupFailed(f"libnftables is missing ({exc}): apt-get install nftables") \
            from exc
    ctx = lib.nft_ctx_new(0)
    if not ctx:
        raise NetnsSetupFailed("nft_ctx_new failed")
    try:
        lib.nft_ctx_buffer_error(ctx)
        if lib.nft_run_cmd_from_buffer(ctx, ruleset.encode()) != 0:
            error = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
            raise NetnsSetupFailed(f"could not load the sandbox's firewall: {error.strip()}")
    finally:
        lib.nft_ctx_free(ctx)


def _configure(firewall: str | None) -> None:
    """Configure the calling thread's network namespace: ``lo`` over netlink, then the
    firewall, if any."""
    from pyroute2 import IPRoute  # imported by warm_up at engine start

    with IPRoute() as ipr:
        (index,) = ipr.link_lookup(ifname="lo")
        ipr.link("set", index=index, state="up")
        addresses = {a.get("address") for a in ipr.get_addr(index=index, family=2)}
        if LOOPBACK_ADDRESS not in addresses:
            ipr.addr("add", index=index, address=LOOPBACK_ADDRESS, prefixlen=8)
    if firewall is not None:
        _load_firewall(firewall)


async def prepare(firewall: str | None = None, existing: int | None = None, *,
                  task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Make a sandbox's network namespace (``nursery.start`` gives a descriptor of it, which
    the caller closes once the runtime has joined it), then configure it: its loopback, and
    the nftables ``firewall`` ruleset when given.  Returns when it is configured.
    ``existing``: a namespace made already (in the sandbox's user namespace), to configure
    instead."""
    token = trio.lowlevel.current_trio_token()
    made: list[int] = []
    failure: list[BaseException] = []
    ready, done = trio.Event(), trio.Event()

    def report(event: trio.Event) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(event.set, trio_token=token)

    def work() -> None:
        try:
            if existing is None:
                linux.unshare(linux.CLONE_NEWNET)  # this thread only
            else:
                linux.setns(existing, linux.CLONE_NEWNET)
            made.append(os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC))
            report(ready)
            _configure(firewall)
        except BaseException as exc:  # handed to the waiting task
            failure.append(exc)
        finally:
            report(ready)
            report(done)

    threading.Thread(target=work, name="hutch-netns", daemon=True).start()
    with trio.CancelScope(shield=True):  # moments; and the descriptor must reach the caller
        await ready.wait()
    if made:
        task_status.started(made[0])
    await done.wait()
    if failure:
        if isinstance(failure[0], NetnsSetupFailed):
            raise failure[0]
        raise NetnsSetupFailed(
            f"could not set up the sandbox's network namespace: {failure[0]}"
        ) from failure[0]


#: Seconds a connection to a sandbox port may take to be accepted.
CONNECT_TIMEOUT = 10.0


def sockets_inside(pidfd: int, count: int = 1) -> list[socket.socket]:
    """``count`` TCP sockets of the network namespace of the process of ``pidfd``, made on a
    thread of its own that joins that namespace and ends (a rootless engine may not join
    the host's again; a socket keeps the namespace it was made in).  Only ``socket()`` runs
    there: connecting or binding is done on the event loop, so a port that never accepts
    holds no thread."""
    made: list[socket.socket] = []
    failure: list[OSError] = []

    def work() -> None:
        try:
            linux.setns(pidfd, linux.CLONE_NEWNET)  # this thread only
            for _ in range(count):
                made.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        except OSError as exc:
            failure.append(exc)

    thread = threading.Thread(target=work, name="hutch-socket", daemon=True)
    thread.start()
    thread.join()
    if failure:
        for sock in made:
            sock.close()
        raise failure[0]
    return made


async def sockets_of(pidfd: Callable[[], int | None], count: int = 1) -> list[socket.socket]:
    """:func:`sockets_inside` the namespace of the init whose pidfd ``pidfd()`` gives now
    (None once its sandbox ended).  The pidfd is duplicated here, on the event loop, where
    it is also closed, so the thread never sees a descriptor number reused by then."""
    current = pidfd()
    if current is None:
        raise ProcessLookupError("the sandbox has ended")
    own = os.dup(current)
    try:
        return await trio.to_thread.run_sync(sockets_inside, own, count)
    finally:
        os.close(own)


async def connect(pidfd: Callable[[], int | None], port: int) -> trio.SocketStream:
    """A stream to ``port`` on the sandbox's own loopback (the sandbox of the init whose
    pidfd ``pidfd()`` gives).  Why not a forward of slirp4netns: that listens on the
    host's 127.0.0.1 in plain text for anyone on the host, beside the engine's TLS listener
    of an ``encrypted_ports`` entry, and its connections are no activity for
    ``idle_timeout``; this way the engine's listener is the one way in."""
    (made,) = await sockets_of(pidfd)
    sock = trio.socket.from_stdlib_socket(made)
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            await sock.connect((LOOPBACK_ADDRESS, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


def warm_up() -> None:
    """Import pyroute2 and load libnftables once at engine start, so the first sandbox does
    not pay for it."""
    import pyroute2  # noqa: F401

    with contextlib.suppress(OSError):
        _nftables()
