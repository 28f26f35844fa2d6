"""The engine's reserve: a few sandboxes started ahead of time for the configuration used
most, whose command is given when one is taken, so that a plain ``Sandbox.create`` skips
the container's creation as a warm pool's take does, with no pool declared.

Why: a fresh create spends about 25 ms before its command runs (user namespace, overlay,
cgroup, network namespace with firewall and slirp4netns, ``crun create``; see
benchmarks/README.md), bwrap about 2 ms, and a warm pool's take 2 ms: the reserve is a
warm pool the engine keeps by itself.  A declared pool serves only sandboxes that run the
default entrypoint, because a container's command is fixed when it is created; a reserved
sandbox runs :data:`WAITER` instead, a ``/bin/sh`` (dash) that waits on the sandbox's stdin
for the command, then ``exec``\\ s it: the command is pid 1, with exactly its environment and
working directory, as in a fresh sandbox, under the same namespaces, limits, seccomp
filter, firewall and capabilities (they were set on the waiter and carry over the exec).

What is kept: up to ``size`` sandboxes (``HUTCH_RESERVE``, default 2; 0 turns it off) for
the key (:func:`reserve_key`: app, image, network, limits, disk) seen most often among
the last :data:`RECENT` creates, when it was seen at least twice; a take is refilled in
the background, 50 ms later.  A request it cannot serve the same way as a fresh create
(a terminal, a readiness probe, files layered at start, volumes, a private network, an
image whose ``/bin/sh`` is not dash, a command not found in the image) is created as before.  Its
cost while idle: each waiting sandbox's processes (dash, slirp4netns), its ids and
cgroup, reported in benchmarks/results.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import logging
import os
import re
import secrets
import stat
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import trio

from hutch.api.models import CreateSandboxRequest
from hutch.engine.errors import AlreadyExists, NotFound
from hutch.engine.lifecycle import sandboxspec
from hutch.engine.lifecycle.livesandbox import LiveSandbox
from hutch.engine.network import hostnet, outbound
from hutch.engine.storage import rootfs
from hutch.engine.storage.store import SandboxRow, Store
from hutch.imagebuild import inroot
from hutch.imagebuild.layout import Image

log = logging.getLogger("hutch.reserve")

#: The request fields that shape a container (a warm pool's, :mod:`.pool`).
KEY_FIELDS = ("network", "outbound_cidr_allowlist", "unencrypted_ports", "encrypted_ports",
              "volumes", "cpu", "cpu_limit", "memory", "memory_limit", "pids_limit",
              "ephemeral_disk")
#: How many of the latest creates choose the configuration kept.
RECENT = 8
DEFAULT_SIZE = 2
#: Seconds between a take and its refill (a warm pool's too: the refill's start runs on
#: the engine's one event loop, so the take's answer and the new owner's first requests
#: go first); and after a failed fill.
REFILL_DELAY = 0.05
RETRY_AFTER = 2.0

#: A reserved sandbox's pid 1 until it is taken: reads a token line, then lines up to the
#: same token again, and evaluates them (:func:`launch_script`).  ``read`` takes a byte at
#: a time from a pipe, so nothing after the script (the user's stdin) is consumed.
WAITER = ('IFS= read -r t || exit 125; c=; while IFS= read -r l; do '
          '[ "$l" = "$t" ] && break; c="$c$l\n"; done; eval "$c"')
WAITER_ARGV = ["/bin/sh", "-c", WAITER]


def reserve_key(req: CreateSandboxRequest, app_id: str, image: Image) -> str | None:
    """What a create must share with the reserve's sandboxes to take one (None: it cannot,
    because something of it must exist before its command starts, or because a waiting
    sandbox would hold what its user may want back: a volume, which cannot be deleted, or
    move to other ids, while a sandbox mounts it)."""
    if req.pty is not None or req.readiness_probe is not None or req.local_mounts \
            or req.network_attachment is not None or req.volumes:
        return None
    settings = req.model_dump(include=set(KEY_FIELDS), mode="json")
    return json.dumps([app_id, image.ref, [p.name for p in image.layer_dirs], settings],
                      sort_keys=True)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def launch_script(argv: list[str], env: dict[str, str], cwd: str, token: str) -> bytes:
    """What :data:`WAITER` reads: ``token``, the shell commands that give the sandbox's
    command its working directory and exactly ``env`` (dash exports ``PWD`` and
    ``OLDPWD`` after a ``cd``: they go) and ``exec`` it, then ``token`` again."""
    lines = [token, f"cd {_quote(cwd)} || exit 126", "unset PWD OLDPWD",
             *(f"export {name}={_quote(value)}" for name, value in env.items()),
             "exec " + " ".join(_quote(arg) for arg in argv), token]
    return ("\n".join(lines) + "\n").encode()


def _executable(root_fd: int, path: str) -> bool:
    try:
        fd = inroot.openat2(root_fd, path, os.O_PATH | os.O_CLOEXEC, inroot.RESOLVE_IN_ROOT)
    except OSError:
        return False
    try:
        mode = os.fstat(fd).st_mode
    finally:
        os.close(fd)
    return stat.S_ISREG(mode) and bool(mode & 0o111)


def finds_command(root: Path, argv0: str, env: dict[str, str], cwd: str) -> bool:
    """Whether ``argv0`` names an executable file in the root file system ``root`` as
    ``exec`` would find it (``PATH`` when it has no ``/``): where it does not, the create
    goes the usual way and fails as it always did, at the create."""
    if "/" in argv0:
        candidates = [argv0 if argv0.startswith("/") else f"{cwd.rstrip('/')}/{argv0}"]
    else:
        candidates = [f"{d.rstrip('/') or ''}/{argv0}" if d else f"{cwd}/{argv0}"
                      for d in env.get("PATH", "").split(":")]
    try:
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return any(_executable(root_fd, c) for c in candidates)
    finally:
        os.close(root_fd)


def runs_dash(root: Path) -> bool:
    """Whether the image's ``/bin/sh`` is dash (whose behaviour :data:`WAITER` and
    :func:`launch_script` rely on)."""
    try:
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fd = inroot.openat2(root_fd, "/bin/sh", os.O_PATH | os.O_CLOEXEC,
                            inroot.RESOLVE_IN_ROOT)
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
    except OSError:
        return False
    finally:
        os.close(root_fd)
    return os.path.basename(target) == "dash"


#: What a launch script may hold: the waiter joins its lines one by one (quadratic in dash),
#: so a request with thousands of lines in its arguments or environment is created fresh.
MAX_SCRIPT_BYTES, MAX_SCRIPT_LINES = 256 * 1024, 1024
#: Names dash can ``export``: an image's config may name others (``spring.profiles``),
#: which a fresh sandbox runs with and dash would refuse.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _script(root: Path, argv: list[str], env: dict[str, str], cwd: str) -> bytes | None:
    """The launch script of a take, or None where the reserve cannot run the command as a
    fresh sandbox would (then it is created fresh: the same result, errors included)."""
    if not all(_NAME.fullmatch(name) for name in env):
        return None
    try:
        script = launch_script(argv, env, cwd, secrets.token_hex(16))
        found = finds_command(root, argv[0], env, cwd)
    except (UnicodeEncodeError, ValueError):  # (lone surrogates, NUL: fresh and refused)
        return None
    if not found or len(script) > MAX_SCRIPT_BYTES or script.count(b"\n") > MAX_SCRIPT_LINES:
        return None
    return script


@dataclass
class Kept:
    """The configuration the reserve keeps sandboxes for."""

    key: str
    template: CreateSandboxRequest
    ready: deque[str] = field(default_factory=deque)
    changed: trio.Event = field(default_factory=trio.Event)

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


async def make_ahead(create: Callable[[], Awaitable[SandboxRow]], views: hostnet.Views,
                     end: Callable[[str], Awaitable[object]], what: str,
                     failed: Callable[[str], None] = lambda why: None) -> SandboxRow | None:
    """One sandbox made ahead of time (the reserve's, a warm pool keeper's), with the
    host's networks its firewall was made against recorded in ``views``; None after a
    failed create (logged, and told to ``failed`` at once) or after one made while the
    host's networks moved (ended with ``end``), in both cases ``RETRY_AFTER`` later, so
    that a keeper never loops creating."""
    before = views.snapshot()
    try:
        row = await create()
    except Exception as exc:  # reported, then tried again
        log.warning("%s could not start a sandbox: %s", what, exc)
        failed(str(exc))
        await trio.sleep(RETRY_AFTER)
        return None
    if not views.made(row.sandbox_id, before):
        await end(row.sandbox_id)
        await trio.sleep(RETRY_AFTER)
        return None
    return row


class ReserveHost(Protocol):
    """What the reserve needs of the sandbox manager (which holds it through its pools)."""

    live: dict[str, LiveSandbox]
    store: Store

    async def create(self, req: CreateSandboxRequest, *, pooled: bool = False,
                     waiter: bool = False) -> SandboxRow: ...
    def adopt_pooled(self, sandbox_id: str, req: CreateSandboxRequest, image: Image
                     ) -> SandboxRow: ...
    async def terminate(self, sandbox_id: str, grace: float) -> SandboxRow: ...
    async def write_stdin(self, sandbox_id: str, data: bytes, eof: bool) -> None: ...


class Reserve:
    def __init__(self, host: ReserveHost, nursery: trio.Nursery, size: int) -> None:
        self.host = host
        self.size = size
        #: the keys of the latest creates it could have served, newest last
        self.recent: deque[str] = deque(maxlen=RECENT)
        self.templates: dict[str, CreateSandboxRequest] = {}
        #: keys whose image's /bin/sh is not dash
        self.refused: set[str] = set()
        self.kept: Kept | None = None
        self.filling = 0
        self.changed = trio.Event()
        self.taken = 0
        #: sandboxes of a configuration no longer kept (or made before the host's networks
        #: changed), to end
        self.retired: list[str] = []
        self.views = hostnet.Views(files=(outbound.HOST_CA_BUNDLE,))
        self.nursery = nursery
        #: the keeper task runs from the first configuration kept until :meth:`close`
        self.keeping = self.closed = False

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def _note(self, key: str, req: CreateSandboxRequest, app_id: str) -> None:
        """Count a create; keep sandboxes for the key seen most often lately."""
        self.recent.append(key)
        if key not in self.templates:
            self.templates[key] = req.model_copy(update={
                "entrypoint": None, "env": {}, "workdir": None, "name": None, "tags": {},
                "idle_timeout": None, "verbose": False, "app_id": app_id,
                "app_name": None})
        counts = collections.Counter(self.recent)
        self.templates = {k: v for k, v in self.templates.items() if k in counts}
        best, seen = counts.most_common(1)[0]
        # (another configuration takes over only when seen more often than the one kept:
        # two used in turn would otherwise swap places at every create, serving none)
        if seen >= 2 and (self.kept is None or (self.kept.key != best
                          and seen > counts.get(self.kept.key, 0))):
            old, self.kept = self.kept, Kept(best, self.templates[best])
            if old is not None:
                self.retired.extend(old.ready)
            if not self.keeping and not self.closed:
                self.keeping = True
                self.nursery.start_soon(self._keep)
            self._notify()

    def _ready(self, kept: Kept) -> str | None:
        while kept.ready:
            sandbox_id = kept.ready.popleft()
            live = self.host.live.get(sandbox_id)
            if live is not None and not live.done.is_set():
                return sandbox_id
            self._notify()  # one that ended: the keeper makes another
        return None

    async def take(self, req: CreateSandboxRequest, app_id: str, image: Image
                   ) -> SandboxRow | None:
        """A reserved sandbox running ``req``'s command, or None (then the create goes on
        as a fresh one)."""
        if self.size <= 0:
            return None
        key = reserve_key(req, app_id, image)
        if key is None or key in self.refused:
            return None
        self._note(key, req, app_id)
        kept = self.kept
        if kept is None or kept.key != key or not kept.ready:
            return None
        if req.name is not None:  # taken: refused before any sandbox is touched
            with contextlib.suppress(NotFound):
                self.host.store.sandbox_by_name(app_id, req.name)
                raise AlreadyExists(
                    f"a running sandbox named {req.name!r} already exists in this app")
        sandbox_id = self._ready(kept)
        if sandbox_id is None:
            return None
        if not self.views.current(sandbox_id) or self.host.store.sandbox(
                sandbox_id).spec.layers != ["sha256:" + p.name for p in image.layer_dirs]:
            # the host's networks changed since it was made, or its image's tag moved
            self.retired.extend([sandbox_id, *kept.ready])
            kept.ready.clear()
            self._notify()
            return None
        live = self.host.live[sandbox_id]
        argv, spec = sandboxspec.spec_of(req, image, sandbox_id)
        default = spec.default_entrypoint
        env = sandboxspec.base_env(image.env, sandbox_id) if default else spec.env
        cwd = "/" if default else spec.workdir
        script = _script(live.dirs.merged, argv, env, cwd)
        if script is None:
            kept.ready.appendleft(sandbox_id)
            return None
        # From here the sandbox is changed: it is handed out, or it ends.  The script goes
        # first, while the sandbox is still pooled (a daemon that dies now leaves a pooled
        # sandbox, which the next one ends), then it becomes the user's.
        try:
            rootfs.make_dirs_inside(live.dirs.merged, spec.workdir, live.owner)
            await self.host.write_stdin(sandbox_id, script, eof=False)
            row = self.host.adopt_pooled(sandbox_id, req, image)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.host.terminate(sandbox_id, 0.0)
            self._notify()
            raise
        live.default_entrypoint = default
        self.taken += 1
        self._notify()
        return row

    def resize(self, size: int) -> None:
        """Keep ``size`` sandboxes from now on (0: none; those waiting beyond it end)."""
        self.size = size
        if self.kept is not None:
            while len(self.kept.ready) > size:
                self.retired.append(self.kept.ready.pop())
        self._notify()

    async def forget_app(self, app_id: str) -> None:
        """The app has stopped: end the sandboxes waiting for its configuration, and keep
        none for it until it creates again (its creates leave the count)."""
        self.recent = deque((k for k in self.recent if json.loads(k)[0] != app_id),
                            maxlen=RECENT)
        if self.kept is not None and self.kept.template.app_id == app_id:
            self.retired.extend(self.kept.ready)
            self.kept.ready.clear()
            self.kept = None
        self._notify()
        while self.retired:
            await self.host.terminate(self.retired.pop(), 0.0)

    def info(self) -> dict[str, int]:
        ready = len(self.kept.ready) if self.kept is not None else 0
        return {"size": self.size, "ready": ready, "taken": self.taken}

    def ended(self, sandbox_id: str) -> None:
        self.views.forget(sandbox_id)
        if self.kept is not None and sandbox_id in self.kept.ready:
            self.kept.ready.remove(sandbox_id)  # (it timed out, or was killed): refill
            self._notify()

    async def _keep(self) -> None:
        """Keep ``size`` sandboxes waiting for the configuration used most, one start at a
        time; end those of a configuration no longer kept."""
        while not self.closed:
            while self.retired:
                await self.host.terminate(self.retired.pop(), 0.0)
            kept = self.kept
            if kept is None or len(kept.ready) + self.filling >= self.size:
                if self.retired:
                    continue
                await self.changed.wait()
                if self.taken:
                    await trio.sleep(REFILL_DELAY)
                continue
            self.filling += 1
            try:
                row = await make_ahead(
                    functools.partial(self.host.create, kept.template, pooled=True,
                                      waiter=True),
                    self.views, lambda sandbox_id: self.host.terminate(sandbox_id, 0.0),
                    "the reserve")
            finally:
                self.filling -= 1
            if row is None:
                continue
            live = self.host.live.get(row.sandbox_id)
            if live is not None and not runs_dash(live.dirs.merged):
                self.refused.add(kept.key)
                self.kept = None
                log.info("the reserve keeps nothing for an image whose /bin/sh is not dash")
            if self.closed or self.kept is not kept or live is None:
                self.retired.append(row.sandbox_id)
                continue
            kept.ready.append(row.sandbox_id)
        while self.retired:
            await self.host.terminate(self.retired.pop(), 0.0)

    async def close(self) -> None:
        self.resize(0)
        self.closed = True
        self._notify()
        while self.retired:
            await self.host.terminate(self.retired.pop(), 0.0)
