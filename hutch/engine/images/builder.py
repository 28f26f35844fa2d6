"""Building images from steps: a base, then one cached image per step.

Each step's cache key is ``sha256(parent's manifest digest + the step's canonical JSON)``
(so a rebuilt parent rebuilds what follows), where a file
step names its uploaded context by digest and a run step's secrets count by a hash of their
values, never the values.  A step whose key is tagged in the store (``hutch/step:<key>``) is
not run again; so a repeated build is a few lookups, and changing one step rebuilds from
that step on.  Run steps execute in a build container: an overlay over the parent's layers,
the host's network (builds reach Debian's mirror and PyPI), the sandbox's other isolation.
Its upper directory becomes the step's layer.  A failing step raises with its exit code and
the last lines of its log, and nothing of it is kept.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets as secrets_module
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from hutch.api.imagemodels import ConfigStep, CopyFromStep, CopyStep, RunStep
from hutch.engine.errors import ImageBuildFailed, Invalid
from hutch.engine.kernel import linux, trees
from hutch.engine.runtime import ociconfig
from hutch.engine.runtime.base import OCIRuntime
from hutch.engine.storage import rootfs
from hutch.imagebuild import treecopy
from hutch.imagebuild.inroot import UnsafeEntry
from hutch.imagebuild.layerunpack import ImportFailed, extract_safely
from hutch.imagebuild.layout import RUNS_CMD_LABEL, ImageStore

log = logging.getLogger("hutch.build")

Emit = Callable[[dict[str, Any]], None]
LayerStep = RunStep | CopyStep | CopyFromStep | ConfigStep
#: Fields added after steps were first keyed: left out of a key while at their default, so
#: that images built before them stay cached.
_LATER_FIELDS = ("cache_mounts", "as_file", "chown", "user", "labels", "exposed_ports",
                 "shell")
#: Lines of a failed step's log quoted in its error.
ERROR_TAIL = 20
#: Build steps trust what the host trusts (a TLS-inspecting proxy's CA, say): its bundle is
#: bound into the build container, on /dev (a tmpfs, so nothing lands in the layer), and
#: named by the variables pip, requests, curl, git, uv and node read.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_CA_PATH = "/dev/hutch-host-ca.crt"
CA_ENV_VARS = ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
               "GIT_SSL_CAINFO", "NODE_EXTRA_CA_CERTS")
_VAR = re.compile(r"\\\$|\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*)|"
                  r"\{([A-Za-z_][A-Za-z0-9_]*)(:?[-+])([^}]*)\})")


def step_key(parent_key: str, step: LayerStep, secret_salt: bytes = b"") -> str:
    """The cache key of ``step`` applied to the image ``parent_key`` (its manifest digest).
    A step's secrets count through an HMAC keyed by ``secret_salt`` (the engine's own,
    :func:`secret_salt`): a key, which names the step's image, must not let anyone who
    sees it test guesses of a secret (a short token falls to a dictionary in seconds)."""
    doc = step.model_dump(exclude={"force_build", "description"})
    for name in _LATER_FIELDS:
        if doc.get(name) in (None, [], False):
            doc.pop(name, None)
    if isinstance(step, ConfigStep) and step.env is not None:
        doc["env"] = list(step.env.items())  # order matters: later values expand earlier
    if isinstance(step, RunStep):
        secrets = json.dumps(step.secret_env, sort_keys=True).encode()
        doc["secret_env"] = hashlib.sha256(secrets).hexdigest() if not step.secret_env \
            else hmac.new(secret_salt, secrets, hashlib.sha256).hexdigest()
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{parent_key}\n{canonical}".encode()).hexdigest()


def secret_salt(data_dir: Path) -> bytes:
    """The engine's key for secrets in cache keys: 32 random bytes in ``<data>/build-salt``
    (0600), made once; only this user's engines can compute a key from a secret."""
    path = data_dir / "build-salt"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        salt = path.read_bytes()
        if len(salt) == 32:
            return salt
        raise ImageBuildFailed(f"{path} is not 32 bytes: remove it (cached build steps "
                               "that used secrets will run again)") from None
    with os.fdopen(fd, "wb") as f:
        salt = secrets_module.token_bytes(32)
        f.write(salt)
    return salt


#: The refs of cached build steps (and imports): what ``prune --cache`` may forget.
STEP_PREFIX = "hutch/step:"


def step_ref(key: str) -> str:
    return f"{STEP_PREFIX}{key[:40]}"


def expand(value: str, env: dict[str, str]) -> str:
    """``$VAR``, ``${VAR}`` (unknown ones become empty), ``${VAR:+word}`` (``word`` when
    VAR is set and not empty), ``${VAR:-word}`` (VAR, or ``word`` when it is unset or
    empty), the colon-less ``${VAR+word}``/``${VAR-word}`` (set, or unset, empty or not)
    and ``\\$`` for a ``$``, as Dockerfile ENV does."""
    def one(m: re.Match[str]) -> str:
        if m.group(0) == "\\$":
            return "$"
        if m.group(3) is not None:
            value, op = env.get(m.group(3)), m.group(4)
            is_set = value is not None and (value != "" or not op.startswith(":"))
            if op.endswith("+"):
                return expand(m.group(5), env) if is_set else ""
            return value if is_set and value is not None else expand(m.group(5), env)
        return env.get(m.group(1) or m.group(2), "")

    return _VAR.sub(one, value)


def describe(step: LayerStep) -> str:
    if not isinstance(step, ConfigStep) and step.description:
        return step.description
    if isinstance(step, RunStep):
        return "RUN " + " && ".join(step.commands)
    if isinstance(step, CopyStep):
        return f"COPY {step.context[:19]} {step.dest}"
    if isinstance(step, CopyFromStep):
        return f"COPY --from={step.image} {' '.join(step.sources)} {step.dest}"
    parts = [f"{k}={v}" for k, v in step.model_dump(exclude={"kind"}).items() if v is not None]
    return "CONFIG " + " ".join(parts)


class StepFailed(ImageBuildFailed):
    pass


class Builder:
    def __init__(self, store: ImageStore, runtime: OCIRuntime, devpts_gid: bool,
                 contexts: Path) -> None:
        self.store = store
        self.runtime = runtime
        self.devpts_gid = devpts_gid
        self.contexts = contexts

    async def apply(self, number: int, parent_ref: str, step: LayerStep, ref: str,
                    emit: Emit) -> None:
        """Build ``step`` on ``parent_ref`` and tag the result ``ref``."""
        layers, config = await trio.to_thread.run_sync(self.store.image_parts, parent_ref)
        cfg: dict[str, Any] = dict(config.get("config", {}))
        if isinstance(step, ConfigStep):
            self._configure(cfg, step)
        elif isinstance(step, CopyStep | CopyFromStep):
            image = await trio.to_thread.run_sync(self.store.resolve, parent_ref)
            source = None if isinstance(step, CopyStep) else \
                await trio.to_thread.run_sync(self.store.resolve, step.image)
            layer = await trio.to_thread.run_sync(
                self._copy_layer, step, image.layer_dirs, source.layer_dirs if source else None)
            layers = [*layers, layer]
        else:
            layers = [*layers, await self._run_layer(number, parent_ref, step, cfg, emit)]
        await trio.to_thread.run_sync(self.store.write_image, ref, layers, cfg)

    # config ------------------------------------------------------------------------------
    @staticmethod
    def _configure(cfg: dict[str, Any], step: ConfigStep) -> None:
        if step.env is not None:
            env = dict(e.split("=", 1) for e in cfg.get("Env", []) if "=" in e)
            for key, value in step.env.items():
                env[key] = expand(value, env)
            cfg["Env"] = [f"{k}={v}" for k, v in env.items()]
        if step.workdir is not None:
            cfg["WorkingDir"] = step.workdir
        if step.entrypoint is not None or step.cmd is not None:
            set_by_steps = (cfg.get("Labels") or {}).get(RUNS_CMD_LABEL) == "true"
            if step.entrypoint is not None:
                cfg["Entrypoint"] = step.entrypoint
                if not set_by_steps:
                    cfg.pop("Cmd", None)  # as Docker: a new entrypoint drops an inherited Cmd
            if step.cmd is not None:
                cfg["Cmd"] = step.cmd
            cfg["Labels"] = {**(cfg.get("Labels") or {}), RUNS_CMD_LABEL: "true"}
        if step.user is not None:
            cfg["User"] = step.user
        if step.shell is not None:
            cfg["Shell"] = step.shell
        if step.labels is not None:
            cfg["Labels"] = {**(cfg.get("Labels") or {}), **step.labels}
        if step.exposed_ports is not None:
            cfg["ExposedPorts"] = {**(cfg.get("ExposedPorts") or {}),
                                   **{port: {} for port in step.exposed_ports}}

    # files -------------------------------------------------------------------------------
    def _copy_layer(self, step: CopyStep | CopyFromStep, lower: list[Path],
                    source: list[Path] | None = None) -> tuple[dict[str, Any], str]:
        """A layer holding the step's files under ``step.dest``: an uploaded context, or
        (``COPY --from``) the ``sources`` of another image, read inside that image's root
        (:mod:`hutch.imagebuild.treecopy`).

        The files are written into the image itself, mounted as a build container gets it
        (an overlay over its layers), and every path is resolved by the kernel inside that
        root: ``dest`` and the image's symlinks lead where they lead in a sandbox
        (``/../../x`` is ``/x``; ``/escape/x``, with ``/escape -> /home/me``, is the image's
        ``/home/me/x``), never to the host.  The overlay's upper directory is the layer, so
        directories leading to ``dest`` keep the mode and owner they have below (``/tmp``
        stays 1777) and new ones are 0755 root.  A failure leaves nothing behind.
        """
        work = Path(tempfile.mkdtemp(dir=self.store.tmp, prefix="copy-"))
        dirs = rootfs.SandboxDirs(work)
        try:
            if isinstance(step, CopyStep):
                context = self.contexts / step.context.split(":", 1)[1]
                if not context.is_file():
                    raise Invalid(f"build context {step.context} was not uploaded")
            else:
                context = work / "from.tar"
                if not self._tar_from_image(step, source or [], work, context):
                    step = step.model_copy(update={"as_file": False})  # a directory's files
            if not lower:  # an image without layers: overlayfs needs one, an empty one
                (work / "empty").mkdir()
                lower = [work / "empty"]
            rootfs.mount_rootfs(dirs, lower)
            try:
                _extract_context(context, dirs.merged, step)
            finally:
                rootfs.unmount_rootfs_keep_upper(dirs)
            return self.store.commit_layer_dir(dirs.upper)
        finally:
            trees.remove_tree(work)

    @staticmethod
    def _tar_from_image(step: CopyFromStep, layers: list[Path], work: Path,
                        into: Path) -> bool:
        """The sources of ``step`` from the image of ``layers``, as a tar at ``into``;
        whether that is one regular file."""
        merged = work / "from"
        merged.mkdir()
        many = len(layers) > 1
        try:
            if many:  # overlayfs without an upper directory: read-only
                lower = ":".join(str(d) for d in reversed(layers))
                linux.mount("overlay", str(merged), "overlay",
                            linux.MS_NODEV | linux.MS_RDONLY, f"userxattr,lowerdir={lower}")
            # one layer is read in place (its whiteouts, 0:0 devices, are never copied)
            root = str(merged if many or not layers else layers[0])
            try:
                with open(into, "wb") as out:
                    return treecopy.tar_sources(root, step.sources, out)
            finally:
                if many:
                    linux.umount(str(merged), linux.MNT_DETACH)
        except (treecopy.CopyFailed, UnsafeEntry, OSError) as exc:
            raise Invalid(f"COPY --from={step.image}: {exc}") from exc

    # commands ----------------------------------------------------------------------------
    async def _run_layer(self, number: int, parent_ref: str, step: RunStep,
                         cfg: dict[str, Any], emit: Emit) -> tuple[dict[str, Any], str]:
        image = await trio.to_thread.run_sync(self.store.resolve, parent_ref)
        work = Path(tempfile.mkdtemp(dir=self.store.tmp, prefix="build-"))
        dirs = rootfs.SandboxDirs(work)
        cid = f"hutch-build-{work.name.split('-', 1)[1]}"
        env = dict(e.split("=", 1) for e in cfg.get("Env", []) if "=" in e)
        env.update(step.secret_env)
        env.update(step.env)  # explicit env wins over secrets, as for sandboxes
        workdir = cfg.get("WorkingDir") or "/"
        try:
            rootfs.mount_rootfs(dirs, image.layer_dirs)
            try:
                rootfs.make_dirs_inside(dirs.merged, workdir)
                etc = rootfs.write_etc_files(dirs, "hutch-build")
                user = cfg.get("User") or None
                try:  # (in a worker thread: it reads the image's files)
                    owner = await trio.to_thread.run_sync(
                        treecopy.lookup_owner, str(dirs.merged), user) if user else (0, 0)
                except UnsafeEntry as exc:
                    raise StepFailed(f"image build step {number}: USER {user}: {exc}") from exc
                mounts = self._cache_mounts(step, dirs.merged, owner)
                for command in step.commands:
                    argv = [*(cfg.get("Shell") or ["/bin/sh", "-c"]), command]
                    await self._run_command(number, cid, dirs, argv, env, workdir, etc, emit,
                                            owner, mounts)
            finally:
                rootfs.unmount_rootfs_keep_upper(dirs)
            return await trio.to_thread.run_sync(self.store.commit_layer_dir, dirs.upper)
        finally:
            trees.remove_tree(work)

    def _cache_mounts(self, step: RunStep, merged: Path, owner: tuple[int, int]
                      ) -> list[ociconfig.Mount]:
        """Bind mounts of the step's cache directories (``RUN --mount=type=cache``): one
        per target path, kept in ``<data>/build-cache`` across builds and never part of a
        layer; a new one belongs to the user the step runs as, as BuildKit's does."""
        mounts = []
        for target in step.cache_mounts:
            source = self.contexts.parent / "build-cache" / hashlib.sha256(
                target.encode()).hexdigest()[:24]
            if not source.is_dir():
                source.mkdir(parents=True)
                os.chown(source, *owner)
            rootfs.make_dirs_inside(merged, target)
            mounts.append(ociconfig.Mount(destination=target, type="bind", source=str(source),
                                          options=["rbind", "rw", "nosuid", "nodev"]))
        return mounts

    async def _run_command(self, number: int, cid: str, dirs: rootfs.SandboxDirs,
                           argv: list[str], env: dict[str, str], workdir: str,
                           etc: dict[str, str], emit: Emit, owner: tuple[int, int] = (0, 0),
                           mounts: list[ociconfig.Mount] | None = None) -> None:
        env = dict(env)
        if HOST_CA_BUNDLE.is_file():
            etc = {**etc, BUILD_CA_PATH: str(HOST_CA_BUNDLE)}
            env.update({var: BUILD_CA_PATH for var in CA_ENV_VARS if var not in env})
        process = ociconfig.process_spec(argv, env, workdir)
        if owner != (0, 0):  # the image's USER: its ids; no capabilities unless root
            process.user = ociconfig.User(uid=owner[0], gid=owner[1])
            if owner[0] != 0:
                process.capabilities = ociconfig.Capabilities(
                    bounding=process.capabilities.bounding, effective=[], permitted=[])
        spec = ociconfig.sandbox_spec(
            rootfs=str(dirs.merged), hostname="hutch-build", process=process,
            etc_files=etc, devpts_gid=self.devpts_gid, host_network=True,
            extra_mounts=mounts or None,
        )
        (dirs.root / "config.json").write_text(json.dumps(spec.to_json()))
        proc = await self.runtime.run_attached(cid, dirs.root)
        tail: list[str] = []

        async def pump(stream: trio.abc.ReceiveStream | None) -> None:
            if stream is None:
                return
            pending = b""
            async with stream:
                while data := await stream.receive_some(65536):
                    pending += data
                    *lines, pending = pending.split(b"\n")
                    for raw in lines:
                        line = raw.decode(errors="replace")
                        tail[:] = [*tail[-(ERROR_TAIL - 1):], line]
                        emit({"log": line})
            if pending:
                emit({"log": pending.decode(errors="replace")})

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, proc.stdout)
                nursery.start_soon(pump, proc.stderr)
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()
            with trio.CancelScope(shield=True):
                try:
                    await self.runtime.delete(cid, force=True)
                except Exception:
                    pass
        if code != 0:
            code = 128 - code if code < 0 else code
            text = "\n".join(tail)
            raise StepFailed(f"image build step {number} failed: `{argv[-1]}` exited with code "
                             f"{code}; last lines of its output:\n{text}")


def _extract_context(context: Path, merged: Path, step: CopyStep | CopyFromStep) -> None:
    """Write the tar ``context`` into the mounted image at ``merged``: everything owned by
    root, or by ``step.chown`` as the image names it; ``as_file``: its one file becomes
    ``dest`` unless ``dest`` is a directory of the image."""
    try:
        with tarfile.open(context) as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member)
            uid, gid = treecopy.lookup_owner(str(merged), step.chown) if step.chown else (0, 0)
            for member in members:
                member.uid, member.gid, member.uname, member.gname = uid, gid, "", ""
            under = step.dest
            if step.as_file and not treecopy.is_dir_in(str(merged), step.dest):
                if len(members) != 1 or not members[0].isreg():
                    raise Invalid("a copy to a file path needs exactly one file")
                members[0].name = Path(step.dest).name
                under = str(Path(step.dest).parent)
            extract_safely(tar, merged, whiteouts=False, under=under)
    except (ImportFailed, UnsafeEntry, OSError, tarfile.TarError) as exc:
        what = step.context if isinstance(step, CopyStep) else f"COPY --from={step.image}"
        raise Invalid(f"build context {what}: {exc}") from exc


def _check_member(member: tarfile.TarInfo) -> None:
    """Refuse archive entries that would land outside the destination."""
    parts = Path(member.name).parts
    if member.name.startswith("/") or ".." in parts:
        raise Invalid(f"build context entry {member.name!r} leaves its directory")
    if member.islnk() and (member.linkname.startswith("/") or ".." in Path(member.linkname).parts):
        raise Invalid(f"build context hard link {member.name!r} leaves its directory")
    if member.isdev():
        raise Invalid(f"build context entry {member.name!r} is a device")
