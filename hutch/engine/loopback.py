"""A sandbox's loopback interface, brought up with pyroute2 before its process starts.

The runtime gives every sandbox a fresh network namespace; the engine then brings its
``lo`` up and makes sure it holds 127.0.0.1/8, whatever the runtime did, so "loopback
only" (``block_network=True``) means a working loopback on every runtime.

Netlink sockets belong to the network namespace of the thread that opens them, so the
work runs on a thread of its own that joins the sandbox's namespace with setns(2).  That
thread never returns to the host's namespace (a rootless engine may not join it again) and
is not one of trio's pooled worker threads, which must stay in the host's namespace: it
ends when the work is done.
"""

from __future__ import annotations

import os
import threading

import trio

from hutch.engine import linux
from hutch.engine.errors import Invalid

LOOPBACK_ADDRESS = "127.0.0.1"


class LoopbackSetupFailed(Invalid):
    pass


def _bring_up(netns_path: str) -> None:
    """Runs on its own thread: join the namespace, then configure ``lo`` over netlink."""
    from pyroute2 import IPRoute  # imported by warm_up at engine start

    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        linux.setns(fd, linux.CLONE_NEWNET)
    finally:
        os.close(fd)
    with IPRoute() as ipr:
        (index,) = ipr.link_lookup(ifname="lo")
        ipr.link("set", index=index, state="up")
        addresses = {a.get("address") for a in ipr.get_addr(index=index, family=2)}
        if LOOPBACK_ADDRESS not in addresses:
            ipr.addr("add", index=index, address=LOOPBACK_ADDRESS, prefixlen=8)


async def configure(pid: int) -> None:
    """Bring up the loopback of the network namespace of ``pid`` (created, not started)."""
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            _bring_up(f"/proc/{pid}/ns/net")
        except BaseException as exc:  # handed to the waiting task
            failure.append(exc)
        finally:
            try:
                trio.from_thread.run_sync(done.set, trio_token=token)
            except trio.RunFinishedError:
                pass

    threading.Thread(target=work, name=f"hutch-loopback-{pid}", daemon=True).start()
    await done.wait()
    if failure:
        raise LoopbackSetupFailed(
            f"could not configure the sandbox's loopback with pyroute2: {failure[0]}"
        ) from failure[0]


def warm_up() -> None:
    """Import pyroute2 once at engine start, so the first sandbox does not pay for it."""
    import pyroute2  # noqa: F401
