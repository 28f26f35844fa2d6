"""The engine daemon's main (``python -m hutch.engine.serve``), run by the pause process.

It opens the state database, probes the OCI runtime, adopts or reaps the sandboxes a
previous daemon left, and serves the API on a Unix socket of mode 0600 until SIGTERM.
SIGTERM stops serving but leaves sandboxes running: a later daemon adopts them.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import trio

from hutch import __version__
from hutch.api import paths
from hutch.api.enginemodels import DefaultLimits, EngineInfo, ReserveInfo
from hutch.api.models import API_VERSION
from hutch.engine.commands import starter
from hutch.engine.httpd.server import HTTPServer
from hutch.engine.images.builder import Builder
from hutch.engine.images.service import ImageService
from hutch.engine.isolation import cgroups, seccompbpf
from hutch.engine.kernel import linux
from hutch.engine.lifecycle import sandboxlimits
from hutch.engine.lifecycle.manager import SandboxManager
from hutch.engine.lifecycle.pool import PoolService
from hutch.engine.lifecycle.reserve import DEFAULT_SIZE as DEFAULT_RESERVE
from hutch.engine.network import netns
from hutch.engine.routes.app import build_app
from hutch.engine.routes.fastpath import FastPath
from hutch.engine.runtime.probe import choose_runtime
from hutch.engine.storage.store import Store

log = logging.getLogger("hutch.engine")

#: Seconds the daemon gives requests in flight to finish once asked to stop.
SHUTDOWN_GRACE = 1.0
#: Seconds an idle client connection is kept open.
KEEP_ALIVE = 300.0


def _listen(path: Path) -> socket.socket:
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen(512)
    return sock


def stop_pause_process(runtime_dir: Path) -> None:
    """Ask the pause process to exit (after this daemon): ``hutch engine stop``."""
    try:
        pid = int((runtime_dir / paths.PAUSE_PID).read_text())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        pass


def _default_limits(defaults: sandboxlimits.SandboxDefaults, host: cgroups.CgroupHost
                    ) -> DefaultLimits:
    """The defaults as a sandbox gets them here: none for a controller not delegated."""
    return DefaultLimits(
        memory_mib=defaults.memory_mib if "memory" in host.bases else None,
        cpu=defaults.cpu if "cpu" in host.bases else None,
        pids=defaults.pids if "pids" in host.bases else None)


def _log_defaults(defaults: sandboxlimits.SandboxDefaults, host: cgroups.CgroupHost) -> None:
    for problem in defaults.problems:
        log.warning("%s", problem)
    shown = _default_limits(defaults, host)
    log.info("a sandbox that sets none gets: memory %s (%s), cpu %s (%s), pids %s",
             f"{shown.memory_mib} MiB" if shown.memory_mib else "unlimited",
             defaults.memory_why, f"{shown.cpu:g} core{'' if shown.cpu == 1 else 's'}" if shown.cpu
             else "unlimited",
             defaults.cpu_why,
             shown.pids or "unlimited")
    missing = [c for c in cgroups.CONTROLLERS if c not in host.bases]
    if missing:
        log.warning("no default %s limit for sandboxes: %s", "/".join(missing), host.problem)


async def run() -> None:
    runtime_dir, data_dir = paths.runtime_dir(), paths.data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)  # the state (and the secrets in it) is the user's alone
    runtime_dir.chmod(0o700)
    userns = json.loads((runtime_dir / "userns.json").read_text())
    store = Store(data_dir / "state.db")
    netns.warm_up()
    log.info("open files: up to %d", sandboxlimits.raise_descriptor_limit())
    await trio.to_thread.run_sync(seccompbpf.default_annotation)  # compiled once, here
    images = ImageService(data_dir)
    probe = await choose_runtime(runtime_dir / "oci-state", images.store.tmp)
    log.info("runtime %s%s", probe.runtime.name,
             f" (fallback: {probe.fallback_reason})" if probe.fallback_reason else "")
    stop = trio.Event()
    stop_pause = False

    def shutdown() -> None:
        nonlocal stop_pause
        stop_pause = True
        stop.set()

    async with trio.open_nursery() as nursery:
        user = userns.get("user") or os.environ.get("USER", "root")
        cgroup_host = cgroups.detect(user, root=userns["mode"] == "root")
        log.info("cgroup v%d limits: %s%s", cgroup_host.version,
                 ", ".join(cgroup_host.bases) or "none",
                 f" ({cgroup_host.problem})" if cgroup_host.problem else "")
        defaults = sandboxlimits.defaults(cgroup_host)
        _log_defaults(defaults, cgroup_host)
        manager = SandboxManager(
            store=store, images=images, runtime=probe.runtime, data_dir=data_dir,
            runtime_dir=runtime_dir, devpts_gid=userns["mode"] != "single", nursery=nursery,
            cgroups=cgroup_host, fork_server=starter.make_fork_server(), defaults=defaults,
            userns_mode=userns["mode"], user=user,
        )
        manager.pools = PoolService(manager, nursery, reserve_size=_reserve_size())
        contexts = data_dir / "contexts"
        contexts.mkdir(exist_ok=True)
        images.enable_builds(Builder(images.store, probe.runtime,
                                     devpts_gid=userns["mode"] != "single", contexts=contexts))
        await manager.recover()

        def info() -> EngineInfo:
            return EngineInfo(
                version=__version__, api_version=API_VERSION, pid=os.getpid(),
                runtime=probe.runtime.name, runtime_fallback_reason=probe.fallback_reason,
                userns_mode=userns["mode"], data_dir=str(data_dir),
                default_image=images.default_ref, exec_via=manager.commands.via,
                default_limits=_default_limits(defaults, cgroup_host),
                reserve=ReserveInfo(**manager.pools.reserve.info()) if manager.pools
                else ReserveInfo(),
            )

        sock = trio.socket.from_stdlib_socket(_listen(paths.socket_path()))
        server = HTTPServer(FastPath(build_app(manager, info, shutdown), manager),
                            keep_alive_timeout=KEEP_ALIVE)

        async def on_signals() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    stop.set()
                    return

        async def serve_until_stopped(task_status: trio.TaskStatus[None]) -> None:
            # the server finishes the requests in flight (the shutdown request included)
            await server.serve(sock, stop.wait, task_status=task_status)
            nursery.cancel_scope.cancel()

        async def stop_after_grace() -> None:
            # A request still running (a long poll, a stream) gets SHUTDOWN_GRACE seconds.
            await stop.wait()
            await trio.sleep(SHUTDOWN_GRACE)
            nursery.cancel_scope.cancel()

        # What startup made (the app, its routes and models) lives as long as the engine:
        # keep it out of the garbage collector's full passes.
        gc.collect()
        gc.freeze()
        nursery.start_soon(on_signals)
        nursery.start_soon(stop_after_grace)
        await nursery.start(serve_until_stopped)
        log.info("engine %s ready on %s", __version__, paths.socket_path())
    store.close()
    if stop_pause:
        stop_pause_process(runtime_dir)


def main() -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s engine %(levelname)s %(name)s: %(message)s")
    # runc, nft and friends live in sbin directories, which an ordinary user's PATH lacks.
    path = os.environ.get("PATH", "/usr/bin:/bin").split(":")
    os.environ["PATH"] = ":".join(
        [*path, *[d for d in ("/usr/local/sbin", "/usr/sbin", "/sbin") if d not in path]])
    # The data and runtime directories are 0700, which keeps everything below them private;
    # what the engine creates for sandboxes (their root, volume files) gets normal modes.
    os.umask(0o022)
    linux.set_non_dumpable()  # nothing a sandbox runs may read or write the engine's memory
    try:
        trio.run(run)
    except Exception:
        log.exception("engine failed")
        return 1
    return 0


def _reserve_size() -> int:
    """``HUTCH_RESERVE``: how many sandboxes the engine keeps started ahead of time for the
    configuration used most (:mod:`hutch.engine.lifecycle.reserve`); 0 turns it off."""
    value = os.environ.get("HUTCH_RESERVE", "")
    if value.isdigit() and int(value) <= 64:
        return int(value)
    if value:
        log.warning("HUTCH_RESERVE=%r is not a number from 0 to 64: keeping %d", value,
                    DEFAULT_RESERVE)
    return DEFAULT_RESERVE


if __name__ == "__main__":
    sys.exit(main())

