"""Starting one sandbox's container: root filesystem, bundle, stdio, then create, set up,
start.

Every sandbox is *created* by the runtime (namespaces made, its process waiting), then set
up from outside while nothing in it runs yet: moved into its cgroup
(:mod:`hutch.engine.isolation.cgroups`), its network namespace configured from inside by a
child of the engine's fork server (its loopback and, with network access, its firewall:
:mod:`hutch.engine.network.nsconfig`) and, with network access, connected
(:mod:`hutch.engine.network.outbound`).
Only then is it *started*, so its first instruction already runs under its limits and
with its network.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import trio

from hutch.engine.commands.zygote import ForkServer, Namespaces
from hutch.engine.errors import EngineError
from hutch.engine.isolation import idslices
from hutch.engine.isolation.cgroups import Limits, SandboxCgroup
from hutch.engine.lifecycle import consoles, sandboxids
from hutch.engine.lifecycle.networks import Join
from hutch.engine.network import bridges, outbound
from hutch.engine.runtime import ociconfig
from hutch.engine.runtime.base import OCIRuntime, RuntimeCommandError
from hutch.engine.storage import layermirror, rootfs


@dataclass
class LaunchPlan:
    """Everything the container needs, decided by the manager."""

    sandbox_id: str
    dirs: rootfs.SandboxDirs
    layers: list[Path]
    argv: list[str]
    env: dict[str, str]
    #: made inside the root file system before the container exists
    workdir: str
    #: where the entrypoint starts (``/`` for the default one, which is the same in fresh
    #: and pooled sandboxes)
    init_cwd: str
    mounts: list[ociconfig.Mount]
    devpts_gid: bool
    online: bool = False
    allowlist: list[str] | None = None
    #: the CA bundle it trusts, where not the host's (:func:`tlsproxy.sandbox_trust`)
    trust_bundle: Path | None = None
    cgroup: SandboxCgroup | None = None
    limits: Limits = field(default_factory=Limits)
    disk_mib: int | None = None
    #: the sandbox's own ids (:mod:`hutch.engine.isolation.idslices`), and the in-memory copies of
    #: its layers to mount under them (:mod:`hutch.engine.storage.layermirror`); None: it shares
    #: the engine's namespace
    ids: idslices.Slice | None = None
    lower_copies: list[Path] | None = None
    #: ``dirs.root`` as the sandbox's root reaches it (with ``ids``)
    visible_root: Path | None = None
    #: the fixed-size file system its writes go to (:mod:`hutch.engine.storage.diskslots`)
    disk_slot: Path | None = None
    #: rows and columns of the entrypoint's terminal (``pty=True``; :mod:`.consoles`)
    terminal: tuple[int, int] | None = None
    #: the private network it joins (:mod:`.networks`) and its peers' lines of /etc/hosts
    network: Join | None = None
    hosts_extra: str = ""


async def start_container(runtime: OCIRuntime, fork_server: ForkServer, plan: LaunchPlan
                          ) -> tuple[int, trio.lowlevel.FdStream]:
    """Start the container; returns its init pid and the write end of its stdin.
    ``fork_server`` makes its namespaces: its own user namespace (with ``plan.ids``) and
    its network namespace, configured while the rest is set up, and before the start.

    The entrypoint's stdin is a FIFO in the sandbox's directory.  The engine holds it
    open read-write (so opening never blocks and the entrypoint sees no EOF until the
    client sends one) and hands the entrypoint a read-only descriptor.
    """
    firewall = outbound.ruleset(plan.allowlist, private=plan.network.subnet
                                if plan.network is not None else None) if plan.online else None
    ids = (plan.ids.map_lines(), idslices.SANDBOX_COUNTS) if plan.ids is not None else None
    configured = trio.Event()
    made: Namespaces | None = None
    try:
        async with trio.open_nursery() as nursery:
            made = await nursery.start(_namespaces, fork_server, firewall, ids, configured)
            layers, owner = plan.layers, None
            if plan.ids is not None:
                assert plan.lower_copies is not None and made.user is not None
                layers = layermirror.mount_lowers(plan.lower_copies, plan.dirs.lower,
                                                  made.user)
                owner = plan.ids.root
            return await _start(runtime, plan, layers, owner, made, configured)
    except BaseExceptionGroup as group:
        _raise_first(group)
    finally:
        if made is not None:  # the container holds its namespaces from here on
            for fd in (made.net, made.user):
                if fd is not None:
                    os.close(fd)


async def _namespaces(fork_server: ForkServer, firewall: str | None,
                      ids: tuple[str, dict[str, int]] | None, configured: trio.Event, *,
                      task_status: trio.TaskStatus[Namespaces] = trio.TASK_STATUS_IGNORED
                      ) -> None:
    await fork_server.network_namespace(firewall, ids, task_status=task_status)
    configured.set()


def _raise_first(group: BaseExceptionGroup) -> NoReturn:
    """Raise the set-up's own failure, or the runtime's, rather than the group (or its one
    exception, or else the group)."""
    leaves: list[BaseException] = []

    def collect(exc: BaseException) -> None:  # (in the order they were raised)
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                collect(inner)
        else:
            leaves.append(exc)

    collect(group)
    first = [e for e in leaves if isinstance(e, EngineError | RuntimeCommandError)]
    if first:
        raise first[0] from group
    if len(leaves) == 1:
        raise leaves[0] from group
    raise group


async def _start(runtime: OCIRuntime, plan: LaunchPlan, layers: list[Path], owner: int | None,
                 made: Namespaces, configured: trio.Event
                 ) -> tuple[int, trio.lowlevel.FdStream]:
    dirs = plan.dirs
    rootfs.mount_rootfs(dirs, layers, disk_mib=plan.disk_mib, owner=owner,
                        disk_slot=plan.disk_slot)
    # The logs are the one place the sandbox writes on the host (through /proc/1/fd/1):
    # a tmpfs of LOG_CAP_MIB, or inside its ephemeral_disk, so a write past it is ENOSPC.
    rootfs.mount_logs(dirs, in_scratch=plan.disk_mib is not None)
    rootfs.make_dirs_inside(dirs.merged, plan.workdir, owner)
    etc = rootfs.write_etc_files(dirs, plan.sandbox_id,
                                 nameserver=outbound.SLIRP_DNS if plan.online else None,
                                 owner=owner, hosts_extra=plan.hosts_extra)
    if plan.online:
        trusted = plan.trust_bundle or outbound.HOST_CA_BUNDLE
        etc.update(outbound.host_trust(dirs.merged, trusted))
    if plan.visible_root is not None:
        sandboxids.bind_visible(dirs.root, plan.visible_root)
    fifo = dirs.stdin_fifo
    os.mkfifo(fifo, 0o600)
    writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    reader = os.open(fifo, os.O_RDONLY | os.O_CLOEXEC)
    out = os.open(dirs.stdout, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    err = os.open(dirs.stderr, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    if owner is not None:  # the sandbox's root writes them again as /proc/1/fd/1 and 2
        for fd in (out, err):
            os.fchown(fd, owner, owner)
    netns_fd = made.net  # (start_container closes it)
    try:
        try:
            # The network namespace is connected while the runtime creates the container
            # in it (and configured meanwhile: ``configured``); all of it before the start.
            async with trio.open_nursery() as nursery:
                netns_path = f"/proc/{os.getpid()}/fd/{netns_fd}"
                if plan.online:
                    nursery.start_soon(outbound.attach, netns_path, dirs.root)
                if plan.network is not None:
                    nursery.start_soon(_join, plan.network, netns_fd)
                view = plan.visible_root
                mounts = plan.mounts
                if view is not None:  # the runtime resolves these as the sandbox's root
                    etc = {dest: _seen_from(view, dirs.root, src) for dest, src in etc.items()}
                    mounts = [m.model_copy(update={"source": _seen_from(view, dirs.root,
                                                                        m.source)})
                              if m.source else m for m in mounts]
                spec = ociconfig.sandbox_spec(
                    rootfs=str(view / "merged" if view is not None else dirs.merged),
                    hostname=plan.sandbox_id,
                    process=ociconfig.process_spec(plan.argv, plan.env, plan.init_cwd,
                                                   plan.terminal),
                    etc_files=etc, devpts_gid=plan.devpts_gid, extra_mounts=mounts,
                    cgroups_path=plan.cgroup.runtime_path if plan.cgroup is not None else None,
                    netns_path=netns_path,
                    userns_path=f"/proc/{os.getpid()}/fd/{made.user}"
                    if made.user is not None else None,
                    id_mappings=plan.ids.oci_mappings()
                    if plan.ids is not None and runtime.name == "runc" else None,
                )
                (dirs.root / "config.json").write_text(json.dumps(spec.to_json()))
                # A sandbox with ids of its own is made inside its cgroup: its process
                # runs as another user at once, and cgroup v1 lets only that user (or the
                # host's root) move it.
                inside = plan.cgroup is not None and plan.ids is not None
                if plan.cgroup is not None:
                    plan.cgroup.create(plan.limits)
                console = consoles.ConsoleSocket(dirs.root) if plan.terminal else None
                try:
                    await runtime.create(plan.sandbox_id, dirs.root, stdin=reader, stdout=out,
                                         stderr=err, pid_file=dirs.pid_file,
                                         prefix=plan.cgroup.launcher()
                                         if inside and plan.cgroup is not None else (),
                                         console_socket=console.path if console else None)
                    if console is not None:
                        master = await console.receive()
                        try:
                            await trio.to_thread.run_sync(consoles.start_relay, master,
                                                          dirs.root, fifo, out)
                        finally:
                            os.close(master)
                finally:
                    if console is not None:
                        console.close()
                pid = int(dirs.pid_file.read_text().strip())
                if plan.cgroup is not None and not inside:
                    plan.cgroup.add(pid)
        except BaseExceptionGroup as group:
            _raise_first(group)
        await configured.wait()  # (its firewall loaded: the sandbox's first instruction
        await runtime.start(plan.sandbox_id)  # runs behind it)
    except BaseException:
        os.close(writer)
        raise
    finally:
        for fd in (reader, out, err):
            os.close(fd)
    return pid, trio.lowlevel.FdStream(writer)


def _seen_from(view: Path, root: Path, source: str) -> str:
    """``source``, a path under the sandbox's directory ``root``, as its root reaches it
    (under ``view``); other paths as they are."""
    return source.replace(str(root), str(view), 1) if source.startswith(f"{root}/") else source


async def _join(join: Join, sandbox_netns: int) -> None:
    """Connect the sandbox's network namespace to its private network (about 3 ms, beside
    the runtime's create)."""
    await trio.to_thread.run_sync(bridges.join, join.netns, sandbox_netns,
                                  join.host_interface, join.address, join.prefixlen)
