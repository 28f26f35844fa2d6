"""The ``hutch`` sandbox environment for inspect_ai: each sample's services are hutch
sandboxes, created in parallel (from a warm pool when ``HUTCH_INSPECT_WARM_POOL`` asks for
one; in ``depends_on`` order, on a network of the sample's own where they share one: see
:mod:`hutch.integrations.inspect.project`), and every exec and file operation goes straight
to the engine over hutch's async SDK, with no ``docker`` command line in between.

inspect loads this module through the ``inspect_ai`` entry point (``pip install
"hutch[inspect]"``), which registers the class with ``@sandboxenv(name="hutch")``; nothing
else imports it, so ``import hutch`` never imports inspect_ai.  Errors are the ones
inspect's docker provider raises, so inspect's tools and scorers treat both alike.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import re
import secrets
import shlex
from pathlib import Path
from typing import Any, ClassVar, Literal, Union, overload

import anyio
import yaml
from inspect_ai._util.error import PrerequisiteError
from inspect_ai.util import (
    ExecResult,
    OutputLimitExceededError,
    SandboxConnection,
    SandboxEnvironment,
    SandboxEnvironmentConfigType,
    SandboxEnvironmentLimits,
    sandboxenv,
)
from inspect_ai.util._sandbox.compose import ComposeConfig
from inspect_ai.util._sandbox.environment import SandboxUnavailableError

import hutch
from hutch.exception import ClientClosed, ConflictError, NotFoundError
from hutch.integrations.inspect import compose, project
from hutch.integrations.inspect.compose import ComposeError, ServiceSpec
from hutch.sdk.options import ARG_MAX_BYTES

logger = logging.getLogger(__name__)

#: The app every inspect sandbox is created in, and the tag that marks them for cleanup.
APP_NAME = "inspect"
TAG = project.LABEL
#: Seconds a sandbox may live: hutch's (and Modal's) most; inspect ends it at sample end.
SANDBOX_TIMEOUT = 86400
#: Bytes of stdin sent per request (the SDK buffers at most 2 MiB before a drain).
STDIN_CHUNK = 1024 * 1024
#: Environment variable: the size of a warm pool per image for a task (0: no pool).
WARM_POOL_ENV = "HUTCH_INSPECT_WARM_POOL"

_TAG_VALUE = re.compile(r"[^A-Za-z0-9._-]")


def _tag(value: object) -> str:
    """``value`` as a hutch tag value (letters, digits, ``-``, ``.``, ``_``; 63 at most)."""
    return _TAG_VALUE.sub("_", str(value))[:63] or "_"


def _image(spec: ServiceSpec) -> hutch.Image:
    source = spec.image
    if source.kind == "registry":
        return hutch.Image.from_registry(str(source.ref))
    if source.kind == "dockerfile":
        return hutch.Image.from_dockerfile(str(source.dockerfile), context_dir=source.context)
    return hutch.Image.debian_slim()


def _shape(spec: ServiceSpec) -> dict[str, Any]:
    """The container-shaping arguments a create and its warm pool must share."""
    shape: dict[str, Any] = {"block_network": spec.block_network}
    if spec.memory_mib is not None:
        shape["memory"] = (spec.memory_mib, spec.memory_mib)
    if spec.cpu is not None:
        shape["cpu"] = (spec.cpu, spec.cpu)
    return shape


def services_for(config: SandboxEnvironmentConfigType | None,
                 metadata: dict[str, str] | None = None) -> list[ServiceSpec]:
    """The sandboxes ``config`` asks for (inspect passes a file name, a parsed
    ``ComposeConfig`` or nothing); :class:`PrerequisiteError` for one hutch cannot run."""
    env = {**os.environ}
    for key, value in (metadata or {}).items():
        env[f"SAMPLE_METADATA_{key.replace(' ', '_').upper()}"] = str(value)
    try:
        if isinstance(config, ComposeConfig):
            doc = config.model_dump(mode="json", by_alias=True, exclude_none=True)
            return compose.compose_services(doc, Path.cwd(), env)
        if config is None:
            found = compose.find_config(Path.cwd())
            if found is None:
                return compose.default_services()
            config = str(found)
        if not isinstance(config, str):
            raise ComposeError(f"hutch takes a Dockerfile or a compose file, not {config!r}")
        path = Path(config).resolve()
        if not path.is_file():
            raise ComposeError(f"no such configuration file: {config}")
        if compose.is_dockerfile(path.name):
            return compose.dockerfile_services(path)
        doc = yaml.safe_load(compose.interpolate(path.read_text(), env))
        if not isinstance(doc, dict):
            raise ComposeError(f"{config} is not a compose file")
        return compose.compose_services(doc, path.parent, env)
    except ComposeError as ex:
        raise PrerequisiteError(f"hutch sandbox: {ex}") from ex


class _Tail:
    """The last ``limit`` bytes of a stream, as inspect's docker provider keeps them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.limit:
            del self.data[:len(self.data) - self.limit]


def _is_directory_alias(file: str) -> bool:
    return posixpath.basename(file.rstrip("/")) in (".", "..")


@sandboxenv(name="hutch")
class HutchSandboxEnvironment(SandboxEnvironment):  # type: ignore[misc]
    """One hutch sandbox: a service of a sample."""

    #: Sandboxes still running, by task, for ``task_cleanup`` to end (interrupted samples).
    _live: ClassVar[dict[str, set[str]]] = {}
    #: Warm pools declared by ``task_init``, by task.
    _pools: ClassVar[dict[str, list[Any]]] = {}
    #: Networks of samples not yet deleted, by task, for ``task_cleanup`` to delete.
    _networks: ClassVar[dict[str, set[str]]] = {}

    def __init__(self, sandbox: hutch.Sandbox, service: str, working_dir: str,
                 user: str | None = None, networks: list[str] | None = None) -> None:
        super().__init__()
        self.sandbox = sandbox
        self.service = service
        self.working_dir = working_dir
        self.default_user = user
        #: the networks of its sample (the same list for each of its services)
        self.networks = networks if networks is not None else []

    # -- what inspect asks of a provider -------------------------------------------------

    @classmethod
    def config_files(cls) -> list[str]:
        return [*compose.COMPOSE_FILES, compose.DOCKERFILE]

    @classmethod
    def is_docker_compatible(cls) -> bool:
        return True

    @classmethod
    def default_concurrency(cls) -> int | None:
        # a sandbox costs a few MiB and no daemon round trips: the host's CPUs bound it
        return 4 * (os.cpu_count() or 1)

    def default_polling_interval(self) -> float:
        return 0.2

    @classmethod
    async def task_init(cls, task_name: str,
                        config: SandboxEnvironmentConfigType | None) -> None:
        """Builds the images once (a sample's create then finds them cached) and, with
        ``HUTCH_INSPECT_WARM_POOL=N``, keeps N sandboxes of each started for the task."""
        specs = services_for(config)
        ignored = compose.ignored_keys(specs)
        if ignored:
            logger.warning("hutch sandbox: compose keys not applied: %s", ", ".join(ignored))
        size = int(os.environ.get(WARM_POOL_ENV) or 0)
        app = await hutch.App.lookup.aio(APP_NAME, create_if_missing=True)
        pools = cls._pools.setdefault(task_name, [])
        async with anyio.create_task_group() as group:
            for spec in specs:
                group.start_soon(_prepare, spec, app, size, pools)

    @classmethod
    async def sample_init(cls, task_name: str, config: SandboxEnvironmentConfigType | None,
                          metadata: dict[str, str]) -> dict[str, SandboxEnvironment]:
        """The sample's services, each a sandbox, on networks of the sample's own where
        they share one, started in ``depends_on`` order and healthy (see
        :mod:`hutch.integrations.inspect.project`)."""
        specs = services_for(config, metadata)
        from inspect_ai.log._samples import sample_active

        sample = sample_active()
        tags = {TAG: "1", project.TASK_LABEL: _tag(task_name)}
        if sample is not None:
            tags["inspect-sample"] = _tag(sample.sample.id)
            tags["inspect-epoch"] = _tag(sample.epoch)
        run = project.new_run()
        names = project.network_names(specs, task_name, run)
        if names:
            tags[project.RUN_LABEL] = run
        app = await hutch.App.lookup.aio(APP_NAME, create_if_missing=True)
        made: dict[str, HutchSandboxEnvironment] = {}
        networks: list[str] = []

        async def start(spec: ServiceSpec, network: str | None) -> hutch.Sandbox:
            env = await cls._start(spec, app, tags, task_name, network, networks)
            made[spec.name] = env
            return env.sandbox

        try:
            await project.make_networks(names.values(), project.labels(_tag(task_name), run),
                                        networks)
            cls._networks.setdefault(task_name, set()).update(networks)
            await project.start_services(specs, start, names)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await cls._end(task_name, made.values(), networks)
            raise
        return {spec.name: made[spec.name] for spec in specs}

    @classmethod
    async def _start(cls, spec: ServiceSpec, app: hutch.App, tags: dict[str, str],
                     task_name: str, network: str | None,
                     networks: list[str]) -> HutchSandboxEnvironment:
        sb = await hutch.Sandbox.create.aio(
            *(spec.entrypoint or ()), app=app, image=_image(spec), env=spec.env or None,
            workdir=spec.workdir, timeout=SANDBOX_TIMEOUT, tags=tags, network=network,
            network_aliases=list(spec.aliases) if network else (),
            readiness_probe=hutch.Probe.with_exec(
                *spec.healthcheck.argv, interval_ms=spec.healthcheck.interval_ms)
            if spec.healthcheck else None, **_shape(spec))
        cls._live.setdefault(task_name, set()).add(sb.object_id)
        env = cls(sb, spec.name, spec.workdir or "/", spec.user, networks)
        if spec.workdir is None:  # the image's WORKDIR, as docker's provider asks for it
            try:
                proc = await sb.exec.aio("pwd", timeout=60)
                found = (await proc.stdout.read.aio()).strip()
                if await proc.wait.aio() == 0 and found.startswith("/"):
                    env.working_dir = found
            except (ConflictError, NotFoundError):
                pass  # (a service that has done its work and ended)
        return env

    @classmethod
    async def _end(cls, task_name: str, environments: Any,
                   networks: list[str] | None = None) -> None:
        """Terminate the sandboxes; then, once they have left them, delete ``networks``."""
        live = cls._live.get(task_name, set())
        ended = [env.sandbox for env in environments
                 if isinstance(env, HutchSandboxEnvironment)]
        async with anyio.create_task_group() as group:
            for sandbox in ended:
                live.discard(sandbox.object_id)
                group.start_soon(_terminate, sandbox)
        if networks:
            with anyio.CancelScope(shield=True):
                left = await project.remove_networks(networks, ended)
            kept = cls._networks.setdefault(task_name, set())
            kept.difference_update(networks)
            kept.update(left)  # (for task_cleanup to try again)

    @classmethod
    async def sample_cleanup(cls, task_name: str,
                             config: SandboxEnvironmentConfigType | None,
                             environments: dict[str, SandboxEnvironment],
                             interrupted: bool) -> None:
        # A hutch sandbox ends in milliseconds and shows no output while it does, so it
        # ends now even when the sample was interrupted (docker's waits for task end).
        networks = {name for env in environments.values()
                    if isinstance(env, HutchSandboxEnvironment) for name in env.networks}
        await cls._end(task_name, environments.values(), sorted(networks))

    @classmethod
    async def task_cleanup(cls, task_name: str, config: SandboxEnvironmentConfigType | None,
                           cleanup: bool) -> None:
        for pool in cls._pools.pop(task_name, []):
            await pool.delete.aio()
        left = cls._live.pop(task_name, set())
        networks = cls._networks.pop(task_name, set())
        if not cleanup:
            if left or networks:
                print(f"hutch sandboxes left running: {' '.join(sorted(left))}; networks: "
                      f"{' '.join(sorted(networks))} "
                      "(end them with: inspect sandbox cleanup hutch)")
            return
        ended = []
        for sandbox_id in left:
            try:
                ended.append(sb := await hutch.Sandbox.from_id.aio(sandbox_id))
                await sb.terminate.aio()
            except (NotFoundError, ConflictError):
                pass
        await project.remove_networks(sorted(networks), ended)

    @classmethod
    async def cli_cleanup(cls, id: str | None) -> None:
        """``inspect sandbox cleanup hutch [ID]``: ends every sandbox inspect started
        (tagged ``inspect-sandbox``) and deletes their networks; with a sandbox's id (or
        the name of a sample's network), that sample's sandboxes and networks."""
        await project.clean_up(id)

    # -- one sandbox ---------------------------------------------------------------------

    def _path(self, file: str) -> str:
        return file if file.startswith("/") else posixpath.join(self.working_dir, file)

    async def exec(self, cmd: list[str], input: str | bytes | None = None,
                   cwd: str | None = None, env: dict[str, str] | None = None,
                   user: str | None = None, timeout: int | None = None,
                   timeout_retry: bool = True, concurrency: bool = True) -> ExecResult[str]:
        # The engine kills the command and everything it started at `timeout` (no wrapper
        # process, no retry: there is no daemon CLI that can hang).
        user = user or self.default_user
        script = None
        argv = cmd
        if sum(len(arg.encode()) for arg in cmd) > ARG_MAX_BYTES:
            script, argv = await self._long_command(cmd)
        try:
            proc = await self.sandbox.exec.aio(
                *argv, workdir=self._path(cwd) if cwd else self.working_dir, env=env or None,
                timeout=timeout, user=user, text=False)
        except (ConflictError, NotFoundError, ClientClosed) as ex:
            raise SandboxUnavailableError(
                f"The sandbox is not running and cannot execute: {ex}") from ex
        try:
            return await self._finish(proc, cmd, input, timeout)
        finally:
            if script is not None:
                with anyio.CancelScope(shield=True):
                    try:
                        await self.sandbox.filesystem.remove.aio(script)
                    except Exception:
                        pass

    async def _long_command(self, cmd: list[str]) -> tuple[str, list[str]]:
        """A command line beyond what an exec request carries (hutch's, as Modal's, is
        64 KiB; the kernel takes 2 MiB): a script in the sandbox that ``exec``s it, every
        argument quoted, run by ``/bin/sh`` named by absolute path (``cmd[0]`` is still
        found through the sandbox's ``PATH``)."""
        script = f"/tmp/.hutch-inspect-{secrets.token_hex(8)}.sh"
        text = "exec " + shlex.join(cmd) + "\n"
        await self.sandbox.filesystem.write_bytes.aio(text.encode(), script)
        return script, ["/bin/sh", script]

    async def _finish(self, proc: Any, cmd: list[str], input: str | bytes | None,
                      timeout: int | None) -> ExecResult[str]:
        limit = SandboxEnvironmentLimits.MAX_EXEC_OUTPUT_SIZE
        out, err = _Tail(limit), _Tail(limit)
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(_collect, proc.stdout, out)
                group.start_soon(_collect, proc.stderr, err)
                await _feed(proc.stdin, input)
            code = await proc.wait.aio()
        except BaseException:
            with anyio.CancelScope(shield=True):
                try:
                    await proc.kill.aio()
                except Exception:
                    pass
            raise
        stdout = out.data.decode(errors="replace")
        stderr = err.data.decode(errors="replace")
        if timeout is not None and code == -1:
            error = TimeoutError(f"Command timed out after {timeout} seconds")
            if stdout or stderr:
                setattr(error, "truncated_output", stdout + stderr)  # noqa: B010 (as docker's)
            raise error
        if code == 126 and not stdout and _refused(stderr, cmd):
            raise PermissionError(f"Permission denied executing command: {stderr.strip()}")
        return ExecResult(success=code == 0, returncode=code, stdout=stdout, stderr=stderr)

    async def write_file(self, file: str, contents: str | bytes) -> None:
        path = self._path(file)
        info = await self._stat(file, path, missing_ok=True)
        if info is not None and info.is_dir():
            raise IsADirectoryError(errno.EISDIR, "Is a directory", file)
        if info is not None and info.is_file() and not info.mode & 0o200:
            # the sandbox's root could write it anyway; docker's default user could not
            raise PermissionError(errno.EACCES, "Permission denied", file)
        data = contents.encode() if isinstance(contents, str) else contents
        try:
            await self.sandbox.filesystem.write_bytes.aio(data, path)
        except IsADirectoryError as ex:
            raise IsADirectoryError(errno.EISDIR, "Is a directory", file) from ex
        except PermissionError as ex:
            raise PermissionError(errno.EACCES, "Permission denied", file) from ex
        except (ConflictError, ClientClosed) as ex:
            raise SandboxUnavailableError(f"The sandbox is not running: {ex}") from ex

    @overload
    async def read_file(self, file: str, text: Literal[True] = True) -> str: ...

    @overload
    async def read_file(self, file: str, text: Literal[False]) -> bytes: ...

    async def read_file(self, file: str, text: bool = True) -> Union[str, bytes]:  # noqa: UP007
        if _is_directory_alias(file):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", file)
        path = self._path(file)
        info = await self._stat(file, path)
        if info is not None:
            if info.is_dir():
                raise IsADirectoryError(errno.EISDIR, "Is a directory", file)
            if info.is_file() and info.size > SandboxEnvironmentLimits.MAX_READ_FILE_SIZE:
                raise _read_limit_error()
            if info.is_file() and not info.mode & 0o400:
                raise PermissionError(errno.EACCES, "Permission denied", file)
        try:
            data = await self.sandbox.filesystem.read_bytes.aio(path)
        except FileNotFoundError as ex:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", file) from ex
        except IsADirectoryError as ex:
            raise IsADirectoryError(errno.EISDIR, "Is a directory", file) from ex
        except PermissionError as ex:
            raise PermissionError(errno.EACCES, "Permission denied", file) from ex
        if len(data) > SandboxEnvironmentLimits.MAX_READ_FILE_SIZE:
            raise _read_limit_error()
        return data.decode("utf-8") if text else data

    async def _stat(self, file: str, path: str, *, missing_ok: bool = False) -> Any:
        """The file's ``FileInfo``; inspect's error for a missing or unreachable one (None
        when missing and ``missing_ok``)."""
        try:
            return await self.sandbox.filesystem.stat.aio(path)
        except (FileNotFoundError, NotADirectoryError) as ex:
            if missing_ok:
                return None
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", file) from ex
        except PermissionError as ex:
            raise PermissionError(errno.EACCES, "Permission denied", file) from ex
        except (ConflictError, ClientClosed) as ex:
            raise SandboxUnavailableError(f"The sandbox is not running: {ex}") from ex

    async def connection(self, *, user: str | None = None) -> SandboxConnection:
        """``hutch shell ID``: a terminal in the sandbox (``-u USER`` for another user)."""
        if await self.sandbox.poll.aio() is not None:
            raise ConnectionError(f"Service '{self.service}' is not currently running.")
        user = user or self.default_user
        command = ["hutch", "shell", self.sandbox.object_id, *(["-u", user] if user else [])]
        return SandboxConnection(type="hutch", command=shlex.join(command),
                                 container=self.sandbox.object_id)


async def _prepare(spec: ServiceSpec, app: hutch.App, size: int, pools: list[Any]) -> None:
    """Builds a service's image and, for ``size`` > 0, declares its warm pool."""
    image = await _image(spec).build.aio()
    if size > 0 and spec.poolable:
        pools.append(await app.warm_pool.aio(image, size=min(size, 64), **_shape(spec)))


async def _terminate(sandbox: hutch.Sandbox) -> None:
    try:
        await sandbox.terminate.aio()
    except (NotFoundError, ConflictError, ClientClosed):
        pass


async def _collect(stream: Any, tail: _Tail) -> None:
    async for chunk in stream:
        tail.add(chunk)


async def _feed(stdin: Any, data: str | bytes | None) -> None:
    """Sends ``data`` (if any) and the end of input, so a command reading stdin ends."""
    if data:
        raw = data.encode() if isinstance(data, str) else data
        for start in range(0, len(raw), STDIN_CHUNK):
            stdin.write(raw[start:start + STDIN_CHUNK])
            await stdin.drain.aio()
    stdin.write_eof()
    await stdin.drain.aio()


def _refused(stderr: str, cmd: list[str]) -> bool:
    """Whether ``stderr`` is the engine's own word that it could not execute ``cmd[0]``
    for lack of permission (and not the command's output)."""
    line = stderr.strip()
    return "\n" not in line and bool(cmd) and line in (
        f"exec `{cmd[0]}`: Permission denied", "Permission denied")


def _read_limit_error() -> OutputLimitExceededError:
    return OutputLimitExceededError(limit_str=SandboxEnvironmentLimits.MAX_READ_FILE_SIZE_STR,
                                    truncated_output=None)
