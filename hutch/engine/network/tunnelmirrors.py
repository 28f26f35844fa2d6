"""Tunnel URLs that work inside sandboxes too: each tunnel's port of the host's 127.0.0.1
also listens on 127.0.0.1 inside every sandbox with open network access.

Why: a Modal tunnel URL is public, so a program hands it to another sandbox of the same
user (a browser-driving agent, a test client) and it works there.  A hutch tunnel listens
on the host's loopback, which no sandbox reaches (slirp4netns runs with
``--disable-host-loopback`` and the sandbox's firewall refuses every address of the host).
So the engine makes a listening socket for the same port inside each such sandbox's own
network namespace (joined on a short-lived thread, as for any tunnel connection) and serves
it with the tunnel's own :class:`~hutch.engine.network.tlsproxy.TunnelEndpoint`: the same
certificate, the same 502 while nothing listens, the same activity count, and no path to
anything but that one sandbox port.  ``https://127.0.0.1:<port>`` then means the same
everywhere.  A sandbox with ``block_network`` or an ``outbound_cidr_allowlist`` gets none
(it was meant to reach nothing, or only the networks listed).  A port the sandbox already
uses itself is left to it (logged).  Cost: one socket and one task per tunnel and sandbox,
made when either appears (a thread start and a bind, well under 1 ms each).
Details: docs/design.md, "Tunnels".
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from dataclasses import dataclass

import trio

from hutch.engine.network import netns
from hutch.engine.network.tlsproxy import TunnelEndpoint

log = logging.getLogger("hutch.tunnels")


@dataclass
class _Member:
    """A sandbox that reaches the tunnels: a pidfd of its init (a duplicate of its own,
    closed here; None from then on) and the event of its end."""

    pidfd: int | None
    done: trio.Event


class TunnelMirrors:
    """Every live tunnel (by its host port) and every sandbox that reaches them; each pair
    has a listener inside that sandbox while both live."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._tunnels: dict[int, TunnelEndpoint] = {}
        self._members: dict[str, _Member] = {}

    async def add_tunnel(self, port: int, endpoint: TunnelEndpoint) -> None:
        """A new tunnel on host ``port``: listen for it in every member, then return."""
        if endpoint.done.is_set():
            return
        self._tunnels[port] = endpoint
        self._nursery.start_soon(self._forget_tunnel, port, endpoint)
        for member in list(self._members.values()):
            await self._mirror(member, {port: endpoint})

    async def add_member(self, sandbox_id: str, pidfd: int, done: trio.Event) -> None:
        """A new sandbox that reaches the tunnels: listen in it for each, then return."""
        if done.is_set() or sandbox_id in self._members:
            return
        member = _Member(os.dup(pidfd), done)
        self._members[sandbox_id] = member
        self._nursery.start_soon(self._forget_member, sandbox_id, member)
        await self._mirror(member, dict(self._tunnels))

    async def _forget_tunnel(self, port: int, endpoint: TunnelEndpoint) -> None:
        await endpoint.done.wait()
        if self._tunnels.get(port) is endpoint:
            del self._tunnels[port]

    async def _forget_member(self, sandbox_id: str, member: _Member) -> None:
        await member.done.wait()
        if self._members.get(sandbox_id) is member:
            del self._members[sandbox_id]
        pidfd, member.pidfd = member.pidfd, None
        if pidfd is not None:
            os.close(pidfd)

    async def _mirror(self, member: _Member, tunnels: dict[int, TunnelEndpoint]) -> None:
        if not tunnels or member.done.is_set():
            return
        try:
            sockets = await netns.sockets_of(lambda: member.pidfd, len(tunnels))
        except OSError as exc:  # its init has just ended
            log.info("no tunnel listeners in a sandbox: %s", exc)
            return
        for sock, (port, endpoint) in zip(sockets, tunnels.items(), strict=True):
            await self._nursery.start(self._serve_mirror, sock, port, endpoint, member.done)

    @staticmethod
    async def _serve_mirror(sock: socket.socket, port: int, endpoint: TunnelEndpoint,
                            member_done: trio.Event,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                            ) -> None:
        listening = trio.socket.from_stdlib_socket(sock)
        try:
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            await listening.bind((netns.LOOPBACK_ADDRESS, port))
            listening.listen(128)
        except OSError as exc:
            listening.close()
            task_status.started()
            if exc.errno == errno.EADDRINUSE:
                log.info("tunnel port %d is in use inside a sandbox: left to it", port)
            else:
                log.warning("no listener for tunnel port %d inside a sandbox: %s", port, exc)
            return
        task_status.started()
        listener = endpoint.wrap(trio.SocketListener(listening))
        try:
            await endpoint.serve([listener], member_done)
        finally:
            listening.close()
