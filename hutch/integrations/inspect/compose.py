"""Docker configurations, as inspect's docker provider takes them, turned into what hutch
creates: one :class:`ServiceSpec` per compose service (one sandbox each).

Pure logic on the parsed YAML (dicts), with no import of inspect_ai or yaml, so the unit
tests run without either.  The services of a compose file reach each other by name as on
Docker's project network: the services sharing a compose network (``default`` unless they
name others) are put on one hutch :class:`~hutch.Network` of the sample's own
(:attr:`ServiceSpec.network`), found there by their service name, ``hostname``,
``container_name`` and ``aliases``; a service whose networks are all ``internal`` reaches
its peers and nothing else, and one with ``network_mode: none`` reaches nothing, as in
Docker.  ``depends_on`` orders the starts and ``healthcheck`` becomes a readiness probe
(:mod:`hutch.integrations.inspect.project` runs both).  What hutch cannot do the way Docker
does is refused here with the reason, not approximated.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hutch.api.models import MAX_NETWORK_ALIASES

#: The files inspect's docker provider finds on its own, in its order of preference.
COMPOSE_FILES = ["compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml"]
DOCKERFILE = "Dockerfile"

#: Service keys hutch honours, or that change nothing a sandbox does (``init``, ``expose``:
#: members of a network reach every port of each other, ...); :func:`ignored_keys`
#: reports the others.
HONOURED = frozenset({
    "image", "build", "command", "entrypoint", "working_dir", "environment", "user",
    "network_mode", "networks", "mem_limit", "cpus", "deploy", "init", "x-default",
    "x-local", "healthcheck", "depends_on", "restart", "stdin_open", "tty", "pull_policy",
    "platform", "hostname", "container_name", "expose", "stop_grace_period",
})

#: ``depends_on`` conditions, as compose names them.
STARTED, HEALTHY, COMPLETED = ("service_started", "service_healthy",
                               "service_completed_successfully")

#: Most milliseconds between two runs of a healthcheck until it first passes (Docker runs
#: it every ``interval``, 30 s unless set; nothing is gained by waiting that long here).
PROBE_EVERY_MS = 1000
#: Seconds a start may take besides its healthcheck's schedule (inspect's allowance).
STARTUP_ALLOWANCE = 60

_HOST_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})"
                        r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}))*")


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
class Healthcheck:
    """A service's healthcheck as a readiness probe: ``argv`` run every ``interval_ms``
    until it exits 0, for at most ``wait_s`` seconds (inspect's estimate of Docker's
    schedule, ``start_period + retries * (interval + timeout)``, and its allowance)."""

    argv: tuple[str, ...]
    interval_ms: int
    wait_s: float


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
    #: the sample network it joins (a compose network's name, standing for the networks
    #: its services link to it), or None: it shares a network with no other service
    network: str | None = None
    #: the names its peers find it by there (its service name first)
    aliases: tuple[str, ...] = ()
    #: ``(service, condition)`` for each service it waits for before it starts
    depends_on: tuple[tuple[str, str], ...] = ()
    healthcheck: Healthcheck | None = None

    @property
    def poolable(self) -> bool:
        """Whether a warm pool can serve it (pools start sandboxes with no entrypoint, no
        readiness probe, and off private networks)."""
        return self.entrypoint is None and self.healthcheck is None and self.network is None


def default_services() -> list[ServiceSpec]:
    """No configuration: one ``default`` sandbox of hutch's default image, without network
    access (inspect's own compose file for this case says ``network_mode: none``)."""
    return [ServiceSpec("default", ImageSource("default"), block_network=True)]


def dockerfile_services(path: Path) -> list[ServiceSpec]:
    """A Dockerfile: one ``default`` sandbox of the image it builds, with its directory as
    the build context, and no network access (as inspect's docker provider runs it)."""
    path = path.resolve()
    return [ServiceSpec("default", ImageSource("dockerfile", dockerfile=str(path),
                                               context=str(path.parent)),
                        block_network=True)]


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


_DURATION = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
                  "m": 60.0, "h": 3600.0}


def duration_s(value: object, default: str) -> float:
    """A compose duration (``1m30s``, ``500ms``; a number: seconds) in seconds."""
    if value is None:
        value = default
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = "".join(str(value).split())
    if not text or _DURATION.sub("", text):
        raise ComposeError(f"cannot read the duration {value!r}")
    return sum(float(n) * _DURATION_UNIT[unit] for n, unit in _DURATION.findall(text))


def _healthcheck(name: str, value: Any) -> Healthcheck | None:
    """``healthcheck:`` as a probe (None when disabled, or without a ``test``: hutch's
    images keep no ``HEALTHCHECK`` of their own)."""
    if not isinstance(value, Mapping) or value.get("disable") or value.get("test") is None:
        return None
    test = value["test"]
    if isinstance(test, str):
        argv: list[str] = ["/bin/sh", "-c", test]
    else:
        words = [str(word) for word in test]
        if not words or words[0] == "NONE":
            return None
        if words[0] == "CMD" and len(words) > 1:
            argv = words[1:]
        elif words[0] == "CMD-SHELL" and len(words) > 1:
            argv = ["/bin/sh", "-c", " ".join(words[1:])]
        else:
            raise ComposeError(f"compose service {name!r}: a healthcheck 'test' is a string "
                               f"or starts with CMD, CMD-SHELL or NONE, not {test!r}")
    interval = duration_s(value.get("interval"), "30s")
    timeout = duration_s(value.get("timeout"), "30s")
    start = duration_s(value.get("start_period"), "0s")
    retries = int(value.get("retries", 3))
    schedule = start + (timeout if start else 0) + retries * (interval + timeout)
    return Healthcheck(tuple(argv), max(1, min(round(interval * 1000), PROBE_EVERY_MS)),
                       STARTUP_ALLOWANCE + math.ceil(schedule))


def _depends_on(name: str, value: Any, services: Mapping[str, Any]
                ) -> tuple[tuple[str, str], ...]:
    """``depends_on:`` as a list (each started first) or a mapping with conditions; a
    missing service with ``required: false`` is left out, as compose leaves it."""
    items: Mapping[str, Any] = value if isinstance(value, Mapping) \
        else dict.fromkeys(value or ())
    found = []
    for other, settings in items.items():
        settings = settings or {}
        condition = settings.get("condition", STARTED)
        if condition not in (STARTED, HEALTHY, COMPLETED):
            raise ComposeError(f"compose service {name!r}: unknown depends_on condition "
                               f"{condition!r}")
        if other not in services:
            if settings.get("required", True) is False:
                continue
            raise ComposeError(f"compose service {name!r} depends on {other!r}, which is "
                               "not a service of the file")
        found.append((str(other), str(condition)))
    return tuple(found)


def _networks_of(name: str, service: Mapping[str, Any], defined: Mapping[str, Any]
                 ) -> dict[str, tuple[str, ...]]:
    """The compose networks the service is on, each with the aliases it has there (none
    at all with ``network_mode``; ``default`` when it names none)."""
    mode, networks = service.get("network_mode"), service.get("networks")
    if mode is not None:
        if mode not in ("none", "bridge", "default"):
            raise ComposeError(
                f"compose service {name!r}: network_mode {mode!r} is not available in hutch "
                "(a sandbox has a network namespace of its own; 'none' blocks the network, "
                "and services reach each other on the compose file's networks)")
        if networks:
            raise ComposeError(f"compose service {name!r} has both 'network_mode' and "
                               "'networks' (compose refuses that too)")
        return {}
    if not networks:
        networks = ["default"]
    if not isinstance(networks, Mapping):
        networks = dict.fromkeys(networks)
    joined = {}
    for network, settings in networks.items():
        if network != "default" and network not in defined:
            raise ComposeError(f"compose service {name!r} is on the network {network!r}, "
                               "which the file's top-level 'networks' does not define")
        joined[str(network)] = tuple(str(a) for a in (settings or {}).get("aliases") or ())
    return joined


def _service(name: str, service: Mapping[str, Any], base: Path,
             host: Mapping[str, str]) -> ServiceSpec:
    entrypoint, command = _argv(service.get("entrypoint")), _argv(service.get("command"))
    argv = (entrypoint or []) + (command or []) if entrypoint or command else None
    memory, cpu = _limits(service)
    ignored = tuple(sorted(key for key in service if key not in HONOURED))
    user = service.get("user")
    return ServiceSpec(
        name=name, image=_image(name, service, base),
        env=_environment(service.get("environment"), host),
        workdir=service.get("working_dir"), entrypoint=argv,
        user=str(user) if user is not None else None,
        block_network=service.get("network_mode") == "none", memory_mib=memory, cpu=cpu,
        ignored=ignored, healthcheck=_healthcheck(name, service.get("healthcheck")))


def _defined_networks(doc: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The file's top-level ``networks`` (``internal`` is what hutch applies of them);
    an ``external`` one, made outside the project, is refused."""
    defined = {str(k): v or {} for k, v in (doc.get("networks") or {}).items()}
    for network, settings in defined.items():
        if settings.get("external"):
            raise ComposeError(f"the compose network {network!r} is external: hutch gives "
                               "each sample networks of its own, and joins none made outside")
    return defined


def _link(specs: list[ServiceSpec], services: Mapping[str, Any],
          defined: Mapping[str, Mapping[str, Any]]) -> list[ServiceSpec]:
    """The specs with their networks: the compose networks that share a service become
    one hutch network (a sandbox joins one), made when two services or more are on it; a
    service whose networks are all ``internal`` reaches its peers only."""
    joined = {s.name: _networks_of(s.name, services[s.name] or {}, defined) for s in specs}
    group: dict[str, str] = {}  # a network's way to its group's first name

    def root(network: str) -> str:
        while group.setdefault(network, network) != network:
            network = group[network]
        return network

    for networks in joined.values():
        for one, other in itertools.pairwise(sorted(networks)):
            first, second = sorted((root(one), root(other)))
            group[second] = first
    members: dict[str, int] = {}
    for networks in joined.values():
        if networks:
            members[root(min(networks))] = members.get(root(min(networks)), 0) + 1
    linked = []
    for spec in specs:
        networks = joined[spec.name]
        service = services[spec.name] or {}
        key = root(min(networks)) if networks else None
        internal = bool(networks) and all(defined.get(n, {}).get("internal")
                                          for n in networks)
        spec = replace(spec, block_network=spec.block_network or internal)
        if key is None or members[key] < 2:
            linked.append(spec)  # no peer to reach: no network
            continue
        names = [spec.name, *(str(service[k]) for k in ("hostname", "container_name")
                              if service.get(k)),
                 *(alias for aliases in networks.values() for alias in aliases)]
        aliases = tuple(dict.fromkeys(names))
        for alias in aliases:
            if not _HOST_NAME.fullmatch(alias):
                raise ComposeError(f"compose service {spec.name!r}: {alias!r} is not a host "
                                   "name its peers could find it by")
        if len(aliases) > MAX_NETWORK_ALIASES:
            raise ComposeError(f"compose service {spec.name!r} has {len(aliases)} names on "
                               f"its network; hutch takes {MAX_NETWORK_ALIASES} at most")
        linked.append(replace(spec, network=key, aliases=aliases))
    return linked


def _check_dependencies(specs: list[ServiceSpec], services: Mapping[str, Any]
                        ) -> list[ServiceSpec]:
    """The specs with their ``depends_on``; a cycle, or waiting for the health of a
    service without a healthcheck, is refused (as compose refuses them)."""
    specs = [replace(s, depends_on=_depends_on(s.name, (services[s.name] or {})
                                                .get("depends_on"), services)) for s in specs]
    by_name = {spec.name: spec for spec in specs}
    for spec in specs:
        for other, condition in spec.depends_on:
            if condition == HEALTHY and by_name[other].healthcheck is None:
                raise ComposeError(f"compose service {spec.name!r} waits for {other!r} to "
                                   "be healthy, and it has no healthcheck")
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise ComposeError("compose services depend on each other in a cycle: "
                               + " -> ".join([*path[path.index(name):], name]))
        if name not in done:
            for other, _ in by_name[name].depends_on:
                visit(other, (*path, name))
            done.add(name)

    for spec in specs:
        visit(spec.name, ())
    return specs


def compose_services(doc: Mapping[str, Any], base: Path,
                     host: Mapping[str, str] | None = None) -> list[ServiceSpec]:
    """The sandboxes a parsed compose file asks for, the default one first: the service
    marked ``x-default: true``, else the one named ``default`` (inspect's rule).
    ``base`` is the compose file's directory (build contexts are relative to it)."""
    services = doc.get("services")
    if not isinstance(services, dict) or not services:
        raise ComposeError("a compose file needs a 'services' mapping with a service")
    host = os.environ if host is None else host
    specs = [_service(name, service or {}, base, host) for name, service in services.items()]
    specs = _check_dependencies(_link(specs, services, _defined_networks(doc)), services)
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
