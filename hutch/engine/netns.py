"""A sandbox's network namespace, configured from inside before its process starts.

The runtime gives every sandbox a fresh network namespace; the engine then

* brings its ``lo`` up and makes sure it holds 127.0.0.1/8 (pyroute2), whatever the
  runtime did, so "loopback only" (``block_network=True``) means a working loopback on
  every runtime;
* for a sandbox with network access, loads its firewall (:func:`network.ruleset`) with
  libnftables, the library the ``nft`` command is built on: no ``nsenter``/``nft``
  processes per sandbox (they cost about 6 ms and a few ms of CPU each).

Netlink sockets belong to the network namespace of the thread that opens them, so the
work runs on a thread of its own that joins the sandbox's namespace with setns(2).  That
thread never returns to the host's namespace (a rootless engine may not join it again) and
is not one of trio's pooled worker threads, which must stay in the host's namespace: it
ends when the work is done.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import threading

import trio

from hutch.engine import linux
from hutch.engine.errors import Invalid

LOOPBACK_ADDRESS = "127.0.0.1"


class NetnsSetupFailed(Invalid):
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


def _configure(netns_path: str, firewall: str | None) -> None:
    """Runs on its own thread: join the namespace, configure ``lo`` over netlink, then
    load the firewall, if any."""
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
    if firewall is not None:
        _load_firewall(firewall)


async def configure(pid: int, firewall: str | None = None) -> None:
    """Configure the network namespace of ``pid`` (created, not started): its loopback,
    and the nftables ``firewall`` ruleset when given."""
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            _configure(f"/proc/{pid}/ns/net", firewall)
        except BaseException as exc:  # handed to the waiting task
            failure.append(exc)
        finally:
            try:
                trio.from_thread.run_sync(done.set, trio_token=token)
            except trio.RunFinishedError:
                pass

    threading.Thread(target=work, name=f"hutch-netns-{pid}", daemon=True).start()
    await done.wait()
    if failure:
        if isinstance(failure[0], NetnsSetupFailed):
            raise failure[0]
        raise NetnsSetupFailed(
            f"could not configure the sandbox's loopback with pyroute2: {failure[0]}"
        ) from failure[0]


def warm_up() -> None:
    """Import pyroute2 and load libnftables once at engine start, so the first sandbox does
    not pay for it."""
    import pyroute2  # noqa: F401

    with contextlib.suppress(OSError):
        _nftables()
