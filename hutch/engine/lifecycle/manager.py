"""Sandbox lifecycle: create, supervise, exec, terminate (and recover after a restart:
:mod:`hutch.engine.lifecycle.recovery`).

Each running sandbox has one supervisor task in the daemon's nursery.  It waits on a pidfd
of the sandbox's init process (or the sandbox's deadline), then records the outcome exactly
once, in this order of precedence: terminated (137), timed out (124), the command's own
code (128+n for signal n).  The exit status itself is collected by the pause process, the
sandboxes' subreaper, which keeps it in ``<runtime>/exits/<pid>`` even while no daemon runs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import signal
import ssl
from pathlib import Path

import trio

from hutch.api import exitcodes
from hutch.api.models import MAX_TIMEOUT, CreateSandboxRequest, ExecRequest, ProbeSpec
from hutch.engine.commands.execs import ExecSession, OutputBudget
from hutch.engine.commands.starter import CommandStarter
from hutch.engine.commands.zygote import ForkServer
from hutch.engine.errors import Conflict, Invalid, TimedOut
from hutch.engine.images.service import ImageService
from hutch.engine.isolation.cgroups import CgroupHost, Limits, SandboxCgroup
from hutch.engine.isolation.idslices import Slice
from hutch.engine.lifecycle import logindex, reserve, sandboxlimits, sandboxspec
from hutch.engine.lifecycle.cleanup import PENDING, SandboxCleanup
from hutch.engine.lifecycle.connecttokens import ConnectTokens
from hutch.engine.lifecycle.execregistry import ExecRegistry
from hutch.engine.lifecycle.launch import LaunchPlan, start_container
from hutch.engine.lifecycle.livesandbox import LiveSandbox, first_of, until_exit_activity_or
from hutch.engine.lifecycle.networks import NetworkRegistry
from hutch.engine.lifecycle.pool import PoolService
from hutch.engine.lifecycle.probes import run_probe
from hutch.engine.lifecycle.recovery import SandboxRecovery
from hutch.engine.lifecycle.sandboxids import SandboxIds
from hutch.engine.lifecycle.sandboxlimits import SandboxDefaults
from hutch.engine.network import netns, outbound, tlsproxy
from hutch.engine.network.tunnelmirrors import TunnelMirrors
from hutch.engine.runtime.base import OCIRuntime, RuntimeCommandError
from hutch.engine.storage import locallayers, remains, rootfs
from hutch.engine.storage.diskslots import DiskSlots
from hutch.engine.storage.recordids import new_id
from hutch.engine.storage.store import DEFAULT_APP, SandboxRow, SandboxSpec, Store
from hutch.engine.storage.volumes import VolumeService
from hutch.imagebuild.layout import Image

log = logging.getLogger("hutch.sandbox")


class SandboxManager(SandboxRecovery, SandboxCleanup):
    def __init__(self, *, store: Store, images: ImageService, runtime: OCIRuntime,
                 data_dir: Path, runtime_dir: Path, devpts_gid: bool,
                 nursery: trio.Nursery, cgroups: CgroupHost,
                 fork_server: ForkServer,
                 defaults: SandboxDefaults | None = None, userns_mode: str = "single",
                 user: str | None = None) -> None:
        self.store = store
        self.images = images
        self.runtime = runtime
        self.data_dir = data_dir
        self.tls_context: ssl.SSLContext | None = None
        #: the user's tunnels, listening inside the sandboxes that reach them too
        self.mirrors = TunnelMirrors(nursery)
        self.connects = ConnectTokens(nursery, self.mirrors, self.tls)
        self.sandboxes_dir = data_dir / "sandboxes"
        self.sandboxes_dir.mkdir(parents=True, exist_ok=True)
        self.exits_dir = runtime_dir / "exits"
        self.devpts_gid = devpts_gid
        self.nursery = nursery
        self.cgroups = cgroups
        #: the limits of a sandbox that sets none
        self.defaults = defaults if defaults is not None else sandboxlimits.defaults(cgroups)
        #: makes zygotes, where execs use them, and every sandbox's network namespace
        self.fork_server = fork_server
        self.commands = CommandStarter(
            runtime, fork_server if fork_server.makes_zygotes else None, nursery)
        #: starts a sandbox's container (a seam: unit tests start a host process instead)
        self.launch = start_container
        self.pools: PoolService | None = None
        self.live: dict[str, LiveSandbox] = {}
        self.execs = ExecRegistry(store)
        #: the unread exec output each running sandbox holds in the engine
        self.output: dict[str, OutputBudget] = {}
        self.ids = SandboxIds(userns_mode, runtime_dir)
        self.volumes = VolumeService(store, data_dir, DiskSlots.for_volumes(data_dir, user),
                                     self.ids.slices)
        self.disks = DiskSlots.for_engine(data_dir, user)
        self.networks = NetworkRegistry(data_dir, runtime_dir,
                                        lambda sandbox_id: self.dirs(sandbox_id).etc / "hosts")
        nursery.start_soon(self.ids.sweep_forever)
        self.log_watcher = logindex.LogWatcher()
        nursery.start_soon(self.log_watcher.run)

    def dirs(self, sandbox_id: str) -> rootfs.SandboxDirs:
        return rootfs.SandboxDirs(self.sandboxes_dir / sandbox_id)

    # create ----------------------------------------------------------------------------
    def app_id(self, req: CreateSandboxRequest) -> str:
        """The id of the app ``req`` names (the default app, made on first use)."""
        if req.app_id is not None:
            return self.store.app_by_id(req.app_id)[0]
        return self.store.app_by_name(req.app_name or DEFAULT_APP, create=True)[0]

    async def _with_local_files(self, image: Image, req: CreateSandboxRequest) -> Image:
        """``image`` with a layer of each of ``req``'s local files on top, copied from the
        host where not copied before (:mod:`hutch.engine.storage.locallayers`)."""
        store = self.images.store
        extra = [await trio.to_thread.run_sync(locallayers.layer, store.layers, store.tmp,
                                               mount, image.layer_dirs)
                 for mount in req.local_mounts]
        return dataclasses.replace(image, layer_dirs=[*image.layer_dirs, *extra])

    async def create(self, req: CreateSandboxRequest, *, pooled: bool = False,
                     waiter: bool = False) -> SandboxRow:
        """A new sandbox for ``req`` (taken from a matching warm pool or the reserve when
        there is one); ``pooled``: a sandbox for a pool, unlisted until :meth:`adopt_pooled`
        hands it out; ``waiter``: running :data:`reserve.WAITER` (the reserve's)."""
        allowlist = sandboxspec.checked_network(req)
        sandboxlimits.require_descriptors()
        limits = Limits(cpu=req.cpu, cpu_limit=req.cpu_limit, memory=req.memory,
                        memory_limit=req.memory_limit, pids=req.pids_limit)
        self.cgroups.require(limits)
        limits = self.defaults.apply(limits, disk_mib=req.ephemeral_disk,
                                     controllers=self.cgroups.bases)
        app_id = self.app_id(req)
        image = await self.images.resolve(req.image)
        if req.local_mounts:
            if pooled:
                raise Invalid("warm pools cannot hold sandboxes with copy=False local files "
                              "(their files are read when a sandbox starts); use copy=True")
            image = await self._with_local_files(image, req)
        attachment = req.network_attachment
        if attachment is not None and pooled:
            raise Invalid("warm pools cannot hold sandboxes on a private network")
        if not pooled and self.pools is not None and attachment is None:
            taken = await self.pools.take(req, app_id, image)
            if taken is not None:
                return taken
        sandbox_id = new_id("sb")
        argv, spec_record = sandboxspec.spec_of(req, image, sandbox_id)
        disk = self.disks.take(sandbox_id) if req.ephemeral_disk is None else None
        ids, copies = None, None
        names = spec_record.volumes
        try:
            if self.ids.wanted():
                ids, copies = await self.ids.take(
                    sandbox_id, image.layer_dirs,
                    functools.partial(self.volumes.ids.enter, sandbox_id, names)
                    if names else None)
            elif names:
                self.volumes.ids.mark_mixed(names)
        except BaseException:
            if disk is not None:
                self.disks.give_back(disk)  # (nothing written to it yet)
            raise
        spec_record.limits = dataclasses.asdict(limits)
        spec_record.cgroup = bool(self.cgroups.bases)
        spec_record.ephemeral_disk = req.ephemeral_disk
        spec_record.ids = None if ids is None \
            else {**ids.record(), "volumes": True} if names else ids.record()
        spec_record.disk_slot = str(disk) if disk is not None else None
        default = spec_record.default_entrypoint
        # A default entrypoint (sleep) runs with the image's environment in / , so that a
        # pooled sandbox, started before its user's env and workdir were known, is the same.
        init_env = sandboxspec.base_env(image.env, sandbox_id) if default else spec_record.env
        if waiter:  # its command comes later, with its env and workdir
            argv, init_env = list(reserve.WAITER_ARGV), {}
        workdir = spec_record.workdir
        try:
            self.store.insert_sandbox(
                sandbox_id=sandbox_id, app_id=app_id, name=req.name, image=image.ref,
                spec=spec_record, timeout=MAX_TIMEOUT if pooled else req.timeout,
                runtime=self.runtime.name, tags=req.tags, pooled=pooled,
            )
        except BaseException:
            self._give_back_ids(sandbox_id, spec_record)
            if disk is not None:
                self.disks.give_back(disk)
            raise
        dirs = self.dirs(sandbox_id)
        stdin: trio.lowlevel.FdStream | None = None
        join = None
        try:
            if attachment is not None:
                join = await self.networks.reserve(attachment, sandbox_id, req.name)
            dirs.root.mkdir(parents=True)
            (dirs.root / PENDING).touch()  # until its cleanup is over (recovery finishes it)
            visible = self.ids.visible_dir(dirs.root, ids) if ids is not None else None
            mounts = self.volumes.mounts(req.volumes, dirs.root / "volumes",
                                         stage_all=ids is not None)
            pid, stdin = await self.launch(self.runtime, self.fork_server, LaunchPlan(
                sandbox_id=sandbox_id, dirs=dirs, layers=image.layer_dirs, argv=argv,
                env=init_env, workdir=workdir, init_cwd="/" if default else workdir,
                mounts=mounts, devpts_gid=self.devpts_gid,
                online=req.network == "open", allowlist=allowlist,
                trust_bundle=await tlsproxy.trust_for_sandbox(self.data_dir)
                if spec_record.reaches_tunnels else None,
                cgroup=self._cgroup(sandbox_id, spec_record), limits=limits,
                disk_mib=req.ephemeral_disk, ids=ids, lower_copies=copies,
                visible_root=visible, disk_slot=disk,
                terminal=(req.pty.rows, req.pty.cols) if req.pty is not None else None,
                network=join, hosts_extra=self.networks.hosts_entries(join.network_id)
                if join is not None else ""))
            for port in [*req.unencrypted_ports, *req.encrypted_ports]:
                outbound.record_tunnel(dirs.root, port, 0, tls=port in req.encrypted_ports)
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                if stdin is not None:
                    await stdin.aclose()
                await self._cleanup(sandbox_id, dirs)
                self.store.mark_exited(sandbox_id, None, "failed")
            if isinstance(exc, RuntimeCommandError):
                raise Invalid(f"the sandbox could not start: {exc.stderr}") from exc
            raise
        self.store.mark_running(sandbox_id, pid)
        row = self.store.sandbox(sandbox_id)
        self._supervise(row, stdin)
        remains.record(dirs.root, "init", pid, self.live[sandbox_id].pidfd)
        await self.networks.joined(sandbox_id)  # (never raises: it runs supervised)
        try:
            await self._serve_tunnels(self.live[sandbox_id])
        except BaseException:  # (no CA for its encrypted ports): it must not run on unowned
            with trio.CancelScope(shield=True):
                await self.terminate(sandbox_id, 0.0)
            raise
        return row

    def adopt_pooled(self, sandbox_id: str, req: CreateSandboxRequest, image: Image
                     ) -> SandboxRow:
        """Hand the pooled sandbox ``sandbox_id`` to the user of ``req``: its env, workdir,
        name, tags and timeouts become those of ``req``, its clock starts now."""
        live = self.live[sandbox_id]
        pooled = self.store.sandbox(sandbox_id).spec
        _, spec = sandboxspec.spec_of(req, image, sandbox_id)
        for kept in ("limits", "cgroup", "ephemeral_disk", "ids", "disk_slot"):  # its set-up
            setattr(spec, kept, getattr(pooled, kept))
        rootfs.make_dirs_inside(live.dirs.merged, spec.workdir, live.owner)
        live.deadline = self.store.take_pooled(sandbox_id, name=req.name, tags=req.tags,
                                               spec=spec, timeout=req.timeout)
        live.env, live.workdir = spec.env, spec.workdir
        live.idle_timeout = req.idle_timeout
        self.commands.taken(live)
        live.touch()
        live.reschedule()  # the supervisor looks at the new deadline
        return self.store.sandbox(sandbox_id)

    async def _serve_tunnels(self, live: LiveSandbox) -> None:
        """Start the listeners of the sandbox's ports (again, after a restart, with its
        connect tokens), on the host and in the sandboxes that reach tunnels; and in this
        one those of every tunnel."""
        if live.pidfd is None:
            return  # its init is gone already: nothing to connect to
        for guest, tunnel in outbound.tunnels_of(live.dirs.root).items():
            context = await self.tls() if tunnel.get("tls") else None
            endpoint = tlsproxy.TunnelEndpoint(
                context, functools.partial(netns.connect, live.current_pidfd, guest),
                live.done, live.connections)
            port = await self.nursery.start(tlsproxy.serve_tunnel, endpoint,
                                            int(tunnel.get("host_port") or 0))
            outbound.record_tunnel(live.dirs.root, guest, port, tls=bool(tunnel.get("tls")))
            await self.mirrors.add_tunnel(port, endpoint)
        await self.connects.restore(live)
        if live.reaches_tunnels:
            await self.mirrors.add_member(live.sandbox_id, live.pidfd, live.done)

    async def tls(self) -> ssl.SSLContext:
        """The TLS of tunnels: a certificate from the engine's CA (made on first use)."""
        if self.tls_context is None:
            ca = await trio.to_thread.run_sync(tlsproxy.ensure_ca, self.data_dir)
            self.tls_context = tlsproxy.server_context(ca)
        return self.tls_context

    def _cgroup(self, sandbox_id: str, spec: SandboxSpec) -> SandboxCgroup | None:
        return self.cgroups.cgroup(sandbox_id) if spec.cgroup and self.cgroups.bases else None

    # supervision ----------------------------------------------------------------------------
    def _supervise(self, row: SandboxRow, stdin: trio.lowlevel.FdStream | None = None) -> None:
        assert row.init_pid is not None
        try:
            pidfd: int | None = os.pidfd_open(row.init_pid)
        except ProcessLookupError:
            pidfd = None
        live = LiveSandbox(
            sandbox_id=row.sandbox_id, dirs=self.dirs(row.sandbox_id), pid=row.init_pid,
            pidfd=pidfd, deadline=row.deadline,
            default_entrypoint=row.spec.default_entrypoint,
            env=row.spec.env, workdir=row.spec.workdir, stdin=stdin,
            idle_timeout=row.spec.idle_timeout,
            probe=ProbeSpec.model_validate(row.spec.probe) if row.spec.probe else None,
            cgroup=self._cgroup(row.sandbox_id, row.spec),
            ids=Slice.from_record(row.spec.ids), reaches_tunnels=row.spec.reaches_tunnels,
        )
        live.log_index = logindex.LogIndex(live.dirs)
        self.live[row.sandbox_id] = live
        self.nursery.start_soon(self._supervisor, live)
        self.log_watcher.watch(live.log_index)
        if live.probe is not None:
            self.nursery.start_soon(run_probe, self.commands, live, live.probe)

    async def _supervisor(self, live: LiveSandbox) -> None:
        timed_out = False
        if live.pidfd is not None:
            while True:
                woke = await until_exit_activity_or(live, live.wake_at())
                if woke == "exited":
                    break
                if live.terminating:
                    await trio.lowlevel.wait_readable(live.pidfd)
                    break
                if woke == "deadline" and live.expired():
                    timed_out = True
                    live.signal(signal.SIGKILL)
                    await trio.lowlevel.wait_readable(live.pidfd)
                    break
        live.ended = True  # from here on its row says it has ended
        if live.log_index is not None:  # all its output, before readers see it ended
            live.log_index.record()
            self.log_watcher.forget(live.log_index)
        code = await self._exit_code(live.pid)
        oom, detail = (False, None) if live.cgroup is None else \
            live.cgroup.outcome(killed=code == exitcodes.KILLED and not live.terminating
                                and not timed_out)
        if live.terminating:
            self.store.mark_exited(live.sandbox_id, exitcodes.KILLED, "terminated", detail)
        elif timed_out:
            self.store.mark_exited(live.sandbox_id, exitcodes.TIMED_OUT, "timeout", detail)
        else:
            reason = "oom" if oom else "exited" if code is not None else "lost"
            self.store.mark_exited(live.sandbox_id, code, reason, detail)
        with trio.CancelScope(shield=True):
            await self.commands.release(live)
            await self._cleanup(live.sandbox_id, live.dirs)
        pidfd, live.pidfd = live.pidfd, None  # (tunnels read it before each use)
        if pidfd is not None:
            os.close(pidfd)
        if live.stdin is not None:
            with trio.CancelScope(shield=True):
                await live.stdin.aclose()
        self.live.pop(live.sandbox_id, None)
        self.output.pop(live.sandbox_id, None)
        for session in self.execs.of_sandbox(live.sandbox_id):
            session.discard()  # nobody may read it now, and a paused pipe must run out
        live.done.set()
        if self.pools is not None:
            self.pools.ended(live.sandbox_id)
        log.info("sandbox %s ended", live.sandbox_id)

    async def _exit_code(self, pid: int, wait: float = 5.0) -> int | None:
        """The exit code the pause process recorded for ``pid``, waiting briefly for it."""
        path = self.exits_dir / str(pid)
        delay = 0.0005
        with trio.move_on_after(wait):
            while not path.exists():
                await trio.sleep(delay)
                delay = min(delay * 2, 0.05)
        try:
            code = int(json.loads(path.read_text())["code"])
        except (OSError, ValueError, KeyError):
            log.warning("no exit status recorded for pid %d", pid)
            return None
        path.unlink(missing_ok=True)
        return code

    # terminate / wait ---------------------------------------------------------------------
    def get(self, sandbox_id: str) -> SandboxRow:
        return self.store.sandbox(sandbox_id)

    async def terminate(self, sandbox_id: str, grace: float) -> SandboxRow:
        self.store.sandbox(sandbox_id)  # NotFound for unknown ids
        live = self.live.get(sandbox_id)
        if live is not None:
            live.terminating = True
            if live.default_entrypoint:
                grace = 0.0  # `sleep` as pid 1 ignores SIGTERM: do not wait for nothing
            else:
                live.signal(signal.SIGTERM)
            with trio.move_on_after(grace):
                await live.done.wait()
            if not live.done.is_set():
                live.signal(signal.SIGKILL)
                await live.done.wait()
        return self.store.sandbox(sandbox_id)

    async def wait(self, sandbox_id: str, timeout: float) -> SandboxRow:
        self.store.sandbox(sandbox_id)
        live = self.live.get(sandbox_id)
        if live is not None:
            with trio.move_on_after(timeout):
                await live.done.wait()
        return self.store.sandbox(sandbox_id)

    async def wait_ready(self, sandbox_id: str, timeout: float) -> None:
        row = self.store.sandbox(sandbox_id)
        live = self.live.get(sandbox_id)
        if row.state == "exited" or live is None:
            raise Conflict(f"Sandbox {sandbox_id} has already finished")
        if live.probe is None:
            raise Invalid(f"Sandbox {sandbox_id} has no readiness_probe")
        with trio.move_on_after(timeout):
            await first_of(live.ready.wait, live.done.wait)
        if live.ready.is_set():
            return
        if live.done.is_set():
            raise Conflict(f"Sandbox {sandbox_id} finished before it was ready")
        raise TimedOut("Timeout expired")

    async def write_stdin(self, sandbox_id: str, data: bytes, eof: bool) -> None:
        """Write to the entrypoint's stdin (waiting while its pipe is full); maybe close it."""
        row = self.store.sandbox(sandbox_id)
        live = self.live.get(sandbox_id)
        if row.state == "exited" or live is None:
            raise Conflict(f"Sandbox {sandbox_id} has already finished")
        if live.stdin is None:
            raise Conflict(f"the stdin of sandbox {sandbox_id} is closed (write_eof was "
                           "called, or the engine restarted since it was created)")
        live.touch()
        try:
            if data:
                await live.stdin.send_all(data)
            if eof and row.spec.terminal:
                await live.stdin.send_all(b"\x04")  # a terminal's end of input: ^D
            elif eof:
                stream, live.stdin = live.stdin, None
                live.dirs.stdin_fifo.unlink(missing_ok=True)  # a new daemon must not reopen it
                await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise Conflict(f"the stdin of sandbox {sandbox_id} is closed: {exc}") from exc

    async def shutdown_all(self) -> None:
        async with trio.open_nursery() as n:
            for sandbox_id in list(self.live):
                n.start_soon(self.terminate, sandbox_id, 0.0)

    # exec -----------------------------------------------------------------------------------
    async def exec(self, sandbox_id: str, req: ExecRequest) -> ExecSession:
        live = self.live.get(sandbox_id)
        if live is None or live.terminating or live.ended:
            row = self.store.sandbox(sandbox_id)  # NotFound for unknown ids
            raise Conflict(f"Sandbox {sandbox_id} has already finished"
                           if row.state == "exited" else f"Sandbox {sandbox_id} is not running")
        exec_id = new_id("ex")
        marker = f"HUTCH_EXEC_ID={exec_id}"
        env = {**live.env, **req.env, "HUTCH_EXEC_ID": exec_id}  # the marker wins
        size = (req.pty.rows, req.pty.cols) if req.pty is not None else None
        if req.pty is not None and "TERM" not in req.env:
            env["TERM"] = req.pty.term
        live.active += 1
        live.touch()
        try:
            command = await self.commands.start(
                live, exec_id, req.argv, env, req.workdir or live.workdir, stdin=req.stdin,
                stdout=req.stdout == "pipe", stderr=req.stderr == "pipe", user=req.user,
                pty=size)
        except BaseException:
            live.active -= 1
            live.touch()
            raise
        session = ExecSession(exec_id, sandbox_id, req.argv, command, marker.encode(),
                              live.pidns(), req.timeout,
                              self.output.setdefault(sandbox_id, OutputBudget()), size)
        self.execs.add(session)
        self.nursery.start_soon(self._run_exec, session)
        return session

    async def _run_exec(self, session: ExecSession) -> None:
        try:
            code = await session.run()
            if session.sandbox_id not in self.live:
                session.discard()  # its sandbox has ended: what nobody read goes with it
            # Let whoever waits on the session (an exec answered at its end) go first.
            await trio.lowlevel.cancel_shielded_checkpoint()
            self.execs.record_end(session, code, sandbox_live=session.sandbox_id in self.live)
        finally:
            live = self.live.get(session.sandbox_id)
            if live is not None:
                live.active -= 1
                live.touch()
            self.execs.finished(session)  # readable for a while yet

    def exec_session(self, exec_id: str) -> ExecSession:
        session = self.execs.get(exec_id)
        if session is None:
            self.store.exec_row(exec_id)  # NotFound when unknown
            raise Conflict(f"the output of exec {exec_id} is no longer available")
        return session
