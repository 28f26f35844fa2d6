"""Reaching into a sandbox's network namespace from the daemon: sockets made there, and
connections to the sandbox's own loopback.

The namespace itself is made and configured before the runtime joins it, by a child of
the engine's fork server (:meth:`hutch.engine.commands.zygote.ForkServer.network_namespace`
running :mod:`hutch.engine.network.nsconfig`): set up beside ``crun create`` rather than
after it (which took 5.5-7 ms), it is ready by the time the container is, ``lo`` up with
127.0.0.1/8 on every runtime and the firewall loaded with libnftables (no ``nsenter``/``nft``
processes: about 6 ms each).  Details: docs/design.md, "Networking".
"""

from __future__ import annotations

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
    """Import pyroute2 (private networks' links: :mod:`.bridges`) once at engine start, so
    the first member does not pay for it."""
    import pyroute2  # noqa: F401
