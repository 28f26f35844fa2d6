"""Docker configurations, as inspect's docker provider takes them, turned into what hutch
creates: one :class:`ServiceSpec` per compose service (one sandbox each).

Pure logic on the parsed YAML (dicts), with no import of inspect_ai or yaml, so the unit
tests run without either.  What hutch cannot do the way Docker does is refused here with
the reason, not approximated: sandboxes have network namespaces of their own (outbound
through slirp4netns) and no network between them, so a compose file with several services,
which Docker puts on one network where they reach each other by name, is refused unless it
says (``x-hutch-separate-networks: true``) that its services need no such network.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The files inspect's docker provider finds on its own, in its order of preference.
COMPOSE_FILES = ["compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml"]
DOCKERFILE = "Dockerfile"

#: The top-level key by which a compose file with several services accepts that they get
#: no network between them.
SEPARATE_NETWORKS = "x-hutch-separate-networks"

#: Service keys hutch honours, or that change nothing a sandbox does (``init``,
#: ``healthcheck``: nothing waits for it, ...); :func:`ignored_keys` reports the others.
HONOURED = frozenset({
    "image", "build", "command", "entrypoint", "working_dir", "environment", "user",
    "network_mode", "mem_limit", "cpus", "deploy", "init", "x-default", "x-local",
    "healthcheck", "restart", "stdin_open", "tty", "pull_policy", "platform", "hostname",
})


class ComposeError(ValueError):
    """A configuration hutch cannot run as written; the message says why and what to do."""


@dataclass(frozen=True)
class ImageSource:
    """Where a service's image comes from: ``kind`` is ``default`` (hutch's default
    image), ``registry`` (``ref``) or ``dockerfile`` (``dockerfile`` in ``context``)."""

    kind: str
    ref: str | None = None
    dockerfile: str | None = None
    context: str | None = None


@dataclass(frozen=True)
class ServiceSpec:
    """One sandbox to create for a sample."""

    name: str
    image: ImageSource
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    entrypoint: list[str] | None = None
    user: str | None = None
    block_network: bool = False
    memory_mib: int | None = None
    cpu: float | None = None
    ignored: tuple[str, ...] = ()

    @property
    def poolable(self) -> bool:
        """Whether a warm pool can serve it (pools start sandboxes with no entrypoint)."""
        return self.entrypoint is None


def default_services() -> list[ServiceSpec]:
    """No configuration: one ``default`` sandbox of hutch's default image."""
    return [ServiceSpec("default", ImageSource("default"))]


def dockerfile_services(path: Path) -> list[ServiceSpec]:
    """A Dockerfile: one ``default`` sandbox of the image it builds, with its directory as
    the build context (as inspect's docker provider builds it)."""
    path = path.resolve()
    return [ServiceSpec("default", ImageSource("dockerfile", dockerfile=str(path),
                                               context=str(path.parent)))]


def is_dockerfile(name: str) -> bool:
    """inspect's rule: ``Dockerfile``, ``Dockerfile.x`` or ``x.Dockerfile``."""
    path = Path(name)
    return path.stem == DOCKERFILE or path.suffix == f".{DOCKERFILE}"


def find_config(directory: Path) -> Path | None:
    """The configuration inspect's docker provider would use from ``directory`` when a
    task names none: a compose file, else a Dockerfile."""
    for name in [*COMPOSE_FILES, DOCKERFILE]:
        if (directory / name).is_file():
            return directory / name
    return None


_VARIABLE = re.compile(r"\$(?:\$|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution (``$X``, ``${X}``, ``${X:-default}``, ``${X-d}``,
    ``${X:?message}``, ``$$``), which inspect uses to put sample metadata
    (``SAMPLE_METADATA_*``) into compose files."""
    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, word = match.group(2), match.group(3) or ""
        value = env.get(name)
        if (operator in (":-", ":?") and not value) or (operator in ("-", "?") and value is None):
            if operator.endswith("?"):
                raise ComposeError(f"compose variable {name} is not set: {word}")
            return word
        return value or ""
    return _VARIABLE.sub(substitute, text)


def _argv(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return shlex.split(value)
    return [str(part) for part in value]


def _environment(value: Any, host: Mapping[str, str]) -> dict[str, str]:
    """``environment:`` as a list (``K=V``, or ``K`` for the host's value) or a mapping
    (a null value also takes the host's)."""
    env: dict[str, str] = {}
    items: list[tuple[str, Any]]
    if isinstance(value, dict):
        items = list(value.items())
    else:
        items = [tuple(entry.split("=", 1)) if "=" in entry else (entry, None)  # type: ignore[misc]
                 for entry in (value or [])]
    for key, val in items:
        if val is None:
            if key in host:
                env[key] = host[key]
        else:
            env[key] = str(val).lower() if isinstance(val, bool) else str(val)
    return env


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)i?b?\s*$", re.IGNORECASE)
_UNIT = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def size_mib(value: str | int) -> int:
    """A compose memory size (``512m``, ``2g``, ``1.5GiB``, bytes as a number) in MiB."""
    if isinstance(value, int):
        return max(1, value // 1024**2)
    match = _SIZE.match(value)
    if match is None:
        raise ComposeError(f"cannot read the memory size {value!r}")
    return max(1, int(float(match.group(1)) * _UNIT[match.group(2).lower()] // 1024**2))


def _image(name: str, service: Mapping[str, Any], base: Path) -> ImageSource:
    build = service.get("build")
    if build is not None:
        if isinstance(build, str):
            build = {"context": build}
        context = (base / str(build.get("context") or ".")).resolve()
        dockerfile = context / str(build.get("dockerfile") or DOCKERFILE)
        return ImageSource("dockerfile", dockerfile=str(dockerfile), context=str(context))
    if service.get("image"):
        return ImageSource("registry", ref=str(service["image"]))
    raise ComposeError(f"compose service {name!r} has neither 'image' nor 'build'")


def _limits(service: Mapping[str, Any]) -> tuple[int | None, float | None]:
    limits = ((service.get("deploy") or {}).get("resources") or {}).get("limits") or {}
    memory = service.get("mem_limit") or limits.get("memory")
    cpus = service.get("cpus") or limits.get("cpus")
    return (size_mib(memory) if memory else None, float(cpus) if cpus else None)


def _service(name: str, service: Mapping[str, Any], base: Path,
             host: Mapping[str, str]) -> ServiceSpec:
    entrypoint, command = _argv(service.get("entrypoint")), _argv(service.get("command"))
    argv = (entrypoint or []) + (command or []) if entrypoint or command else None
    network = service.get("network_mode")
    if network not in (None, "none", "bridge", "default"):
        raise ComposeError(
            f"compose service {name!r}: network_mode {network!r} is not available in hutch "
            "(each sandbox has a network namespace of its own; 'none' blocks the network)")
    memory, cpu = _limits(service)
    ignored = tuple(sorted(key for key in service if key not in HONOURED))
    user = service.get("user")
    return ServiceSpec(
        name=name, image=_image(name, service, base),
        env=_environment(service.get("environment"), host),
        workdir=service.get("working_dir"), entrypoint=argv,
        user=str(user) if user is not None else None,
        block_network=network == "none", memory_mib=memory, cpu=cpu, ignored=ignored)


def compose_services(doc: Mapping[str, Any], base: Path,
                     host: Mapping[str, str] | None = None) -> list[ServiceSpec]:
    """The sandboxes a parsed compose file asks for, the default one first: the service
    marked ``x-default: true``, else the one named ``default`` (inspect's rule).
    ``base`` is the compose file's directory (build contexts are relative to it)."""
    services = doc.get("services")
    if not isinstance(services, dict) or not services:
        raise ComposeError("a compose file needs a 'services' mapping with a service")
    if len(services) > 1 and not doc.get(SEPARATE_NETWORKS):
        raise ComposeError(
            f"this compose file has {len(services)} services ({', '.join(services)}); "
            "Docker puts them on one network where they reach each other by name, and "
            "hutch cannot: each hutch sandbox has a network namespace of its own, with "
            "outbound access only, and no network between sandboxes. Use one service, or "
            f"add '{SEPARATE_NETWORKS}: true' at the top of the file if its services do "
            "not talk to each other")
    host = os.environ if host is None else host
    specs = [_service(name, service or {}, base, host) for name, service in services.items()]
    marked = [spec for spec, service in zip(specs, services.values(), strict=True)
              if (service or {}).get("x-default")]
    default = marked[0] if marked else next((s for s in specs if s.name == "default"), None)
    if default is None:
        if len(specs) > 1:
            raise ComposeError("no 'default' service in the compose file: name a service "
                               "'default' or add 'x-default: true' to one")
        default = specs[0]
    return [default, *[spec for spec in specs if spec is not default]]


def ignored_keys(specs: list[ServiceSpec]) -> list[str]:
    """``service.key`` for each compose key hutch does not honour and that matters
    (ports, volumes, capabilities, ...), for one warning."""
    return [f"{spec.name}.{key}" for spec in specs for key in spec.ignored]
