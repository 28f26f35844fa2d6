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

from hutch.api.models import ConfigStep, CopyStep, RunStep
from hutch.engine.errors import ImageBuildFailed, Invalid
from hutch.engine.kernel import trees
from hutch.engine.runtime import ociconfig
from hutch.engine.runtime.base import OCIRuntime
from hutch.engine.storage import rootfs
from hutch.imagebuild.inroot import UnsafeEntry
from hutch.imagebuild.layerunpack import ImportFailed, extract_safely
from hutch.imagebuild.layout import RUNS_CMD_LABEL, ImageStore

log = logging.getLogger("hutch.build")

Emit = Callable[[dict[str, Any]], None]
LayerStep = RunStep | CopyStep | ConfigStep
#: Lines of a failed step's log quoted in its error.
ERROR_TAIL = 20
#: Build steps trust what the host trusts (a TLS-inspecting proxy's CA, say): its bundle is
#: bound into the build container, on /dev (a tmpfs, so nothing lands in the layer), and
#: named by the variables pip, requests, curl, git, uv and node read.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_CA_PATH = "/dev/hutch-host-ca.crt"
CA_ENV_VARS = ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
               "GIT_SSL_CAINFO", "NODE_EXTRA_CA_CERTS")
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*)|"
                  r"\{([A-Za-z_][A-Za-z0-9_]*):\+([^}]*)\})")


def step_key(parent_key: str, step: LayerStep, secret_salt: bytes = b"") -> str:
    """The cache key of ``step`` applied to the image ``parent_key`` (its manifest digest).
    A step's secrets count through an HMAC keyed by ``secret_salt`` (the engine's own,
    :func:`secret_salt`): a key, which names the step's image, must not let anyone who
    sees it test guesses of a secret (a short token falls to a dictionary in seconds)."""
    doc = step.model_dump(exclude={"force_build", "description"})
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


def step_ref(key: str) -> str:
    return f"hutch/step:{key[:40]}"


def expand(value: str, env: dict[str, str]) -> str:
    """``$VAR``, ``${VAR}`` (unknown ones become empty) and ``${VAR:+word}`` (``word`` when
    VAR is set and not empty), as Dockerfile ENV does."""
    def one(m: re.Match[str]) -> str:
        if m.group(3) is not None:
            return expand(m.group(4), env) if env.get(m.group(3)) else ""
        return env.get(m.group(1) or m.group(2), "")

    return _VAR.sub(one, value)


def describe(step: LayerStep) -> str:
    if not isinstance(step, ConfigStep) and step.description:
        return step.description
    if isinstance(step, RunStep):
        return "RUN " + " && ".join(step.commands)
    if isinstance(step, CopyStep):
        return f"COPY {step.context[:19]} {step.dest}"
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
        elif isinstance(step, CopyStep):
            image = await trio.to_thread.run_sync(self.store.resolve, parent_ref)
            layer = await trio.to_thread.run_sync(self._copy_layer, step, image.layer_dirs)
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

    # files -------------------------------------------------------------------------------
    def _copy_layer(self, step: CopyStep, lower: list[Path]) -> tuple[dict[str, Any], str]:
        """A layer holding the context's files under ``step.dest``.

        The context is written into the image itself, mounted as a build container gets it
        (an overlay over its layers), and every path is resolved by the kernel inside that
        root: ``dest`` and the image's symlinks lead where they lead in a sandbox
        (``/../../x`` is ``/x``; ``/escape/x``, with ``/escape -> /home/me``, is the image's
        ``/home/me/x``), never to the host.  The overlay's upper directory is the layer, so
        directories leading to ``dest`` keep the mode and owner they have below (``/tmp``
        stays 1777) and new ones are 0755 root.  A failure leaves nothing behind.
        """
        context = self.contexts / step.context.split(":", 1)[1]
        if not context.is_file():
            raise Invalid(f"build context {step.context} was not uploaded")
        work = Path(tempfile.mkdtemp(dir=self.store.tmp, prefix="copy-"))
        dirs = rootfs.SandboxDirs(work)
        try:
            if not lower:  # an image without layers: overlayfs needs one, an empty one
                (work / "empty").mkdir()
                lower = [work / "empty"]
            rootfs.mount_rootfs(dirs, lower)
            try:
                with tarfile.open(context) as tar:
                    for member in tar.getmembers():
                        _check_member(member)
                    extract_safely(tar, dirs.merged, whiteouts=False, under=step.dest)
            except (ImportFailed, UnsafeEntry, OSError, tarfile.TarError) as exc:
                raise Invalid(f"build context {step.context}: {exc}") from exc
            finally:
                rootfs.unmount_rootfs_keep_upper(dirs)
            return self.store.commit_layer_dir(dirs.upper)
        finally:
            trees.remove_tree(work)

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
                for command in step.commands:
                    await self._run_command(number, cid, dirs, command, env, workdir, etc, emit)
            finally:
                rootfs.unmount_rootfs_keep_upper(dirs)
            return await trio.to_thread.run_sync(self.store.commit_layer_dir, dirs.upper)
        finally:
            trees.remove_tree(work)

    async def _run_command(self, number: int, cid: str, dirs: rootfs.SandboxDirs,
                           command: str, env: dict[str, str], workdir: str,
                           etc: dict[str, str], emit: Emit) -> None:
        env = dict(env)
        if HOST_CA_BUNDLE.is_file():
            etc = {**etc, BUILD_CA_PATH: str(HOST_CA_BUNDLE)}
            env.update({var: BUILD_CA_PATH for var in CA_ENV_VARS if var not in env})
        spec = ociconfig.sandbox_spec(
            rootfs=str(dirs.merged), hostname="hutch-build",
            process=ociconfig.process_spec(["/bin/sh", "-c", command], env, workdir),
            etc_files=etc, devpts_gid=self.devpts_gid, host_network=True,
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
            raise StepFailed(f"image build step {number} failed: `{command}` exited with code "
                             f"{code}; last lines of its output:\n{text}")


def _check_member(member: tarfile.TarInfo) -> None:
    """Refuse archive entries that would land outside the destination."""
    parts = Path(member.name).parts
    if member.name.startswith("/") or ".." in parts:
        raise Invalid(f"build context entry {member.name!r} leaves its directory")
    if member.islnk() and (member.linkname.startswith("/") or ".." in Path(member.linkname).parts):
        raise Invalid(f"build context hard link {member.name!r} leaves its directory")
    if member.isdev():
        raise Invalid(f"build context entry {member.name!r} is a device")
