"""Typed models of the OCI runtime-spec ``config.json`` and the sandbox defaults.

Only the parts hutch sets are modelled; ``to_json`` drops unset fields, so what is written is
a valid runtime-spec document (the tests validate it against the official JSON schema).
The defaults follow podman: its capability set, runc's masked and read-only ``/proc`` paths,
``no_new_privs``, a seccomp allowlist (:mod:`hutch.engine.isolation.seccomp`), and fresh pid, mount,
ipc, uts, cgroup and network namespaces.
"""

from __future__ import annotations

import resource
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hutch.engine.isolation import seccompbpf
from hutch.engine.isolation.seccomp import Seccomp, default_profile

OCI_VERSION = "1.0.2"

#: podman's default capability set (containers.conf ``default_capabilities``).
DEFAULT_CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
]

#: Linux's capabilities in the order of their numbers (linux/capability.h).
CAPABILITY_NUMBERS = {f"CAP_{name}": number for number, name in enumerate([
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE",
    "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME",
    "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ",
    "PERFMON", "BPF", "CHECKPOINT_RESTORE",
])}


def capability_mask(names: list[str]) -> int:
    """The kernel's bit mask of the capabilities ``names`` (as /proc/PID/status shows it)."""
    mask = 0
    for name in names:
        mask |= 1 << CAPABILITY_NUMBERS[name]
    return mask


#: runc's default masked paths (runc spec / libcontainer defaults).
MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
]

#: runc's default read-only paths.
READONLY_PATHS = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
]

NAMESPACES = ["pid", "network", "ipc", "uts", "mount", "cgroup"]
#: Terminals one sandbox's ``/dev/pts`` may hold at once (devpts ``max=``).  Why: every
#: devpts instance but the host's draws from one pool of the kernel's (``kernel.pty.max``
#: less ``kernel.pty.reserve``: 3072 here), so without a cap of its own one sandbox opening
#: ``/dev/ptmx`` in a loop took all 3071 left (measured on Linux 6.18), and every other
#: sandbox's ``exec(pty=True)`` and ``Sandbox.create(pty=True)`` failed with ``ENOSPC``
#: (tests/security/test_issue19_red_team.py).  Their buffers are kernel memory no
#: sandbox's memory limit counts, too.
PTYS_MAX = 256


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")


class User(_Model):
    uid: int = 0
    gid: int = 0
    additional_gids: list[int] | None = Field(default=None, alias="additionalGids")


class Capabilities(_Model):
    bounding: list[str]
    effective: list[str]
    permitted: list[str]
    inheritable: list[str] = Field(default_factory=list)
    ambient: list[str] = Field(default_factory=list)

    @classmethod
    def default(cls) -> Capabilities:
        caps = list(DEFAULT_CAPABILITIES)
        return cls(bounding=caps, effective=caps, permitted=caps)


class Rlimit(_Model):
    type: str
    hard: int
    soft: int


class Box(_Model):
    height: int
    width: int


class Process(_Model):
    terminal: bool = False
    console_size: Box | None = Field(default=None, alias="consoleSize")
    user: User = Field(default_factory=User)
    args: list[str]
    env: list[str]
    cwd: str = "/"
    capabilities: Capabilities = Field(default_factory=Capabilities.default)
    rlimits: list[Rlimit] | None = None
    no_new_privileges: bool = Field(default=True, alias="noNewPrivileges")


class Root(_Model):
    path: str
    readonly: bool = False


class Mount(_Model):
    destination: str
    type: str | None = None
    source: str | None = None
    options: list[str] | None = None


class Namespace(_Model):
    type: str
    path: str | None = None


class IdMapping(_Model):
    container_id: int = Field(alias="containerID")
    host_id: int = Field(alias="hostID")
    size: int


class Linux(_Model):
    namespaces: list[Namespace]
    uid_mappings: list[IdMapping] | None = Field(default=None, alias="uidMappings")
    gid_mappings: list[IdMapping] | None = Field(default=None, alias="gidMappings")
    masked_paths: list[str] = Field(default_factory=lambda: list(MASKED_PATHS), alias="maskedPaths")
    readonly_paths: list[str] = Field(
        default_factory=lambda: list(READONLY_PATHS), alias="readonlyPaths"
    )
    seccomp: Seccomp | None = None
    cgroups_path: str | None = Field(default=None, alias="cgroupsPath")


class Spec(_Model):
    oci_version: str = Field(default=OCI_VERSION, alias="ociVersion")
    process: Process
    root: Root
    hostname: str
    mounts: list[Mount]
    linux: Linux
    annotations: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


def default_mounts(etc_files: dict[str, str], *, devpts_gid: bool) -> list[Mount]:
    """The standard container mounts plus read-only binds of generated ``/etc`` files."""
    devpts = ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
              f"max={PTYS_MAX}"]
    if devpts_gid:
        devpts.append("gid=5")
    mounts = [
        Mount(destination="/proc", type="proc", source="proc"),
        Mount(destination="/dev", type="tmpfs", source="tmpfs",
              options=["nosuid", "strictatime", "mode=755", "size=65536k"]),
        Mount(destination="/dev/pts", type="devpts", source="devpts", options=devpts),
        Mount(destination="/dev/shm", type="tmpfs", source="shm",
              options=["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
        Mount(destination="/dev/mqueue", type="mqueue", source="mqueue",
              options=["nosuid", "noexec", "nodev"]),
        Mount(destination="/sys", type="sysfs", source="sysfs",
              options=["nosuid", "noexec", "nodev", "ro"]),
    ]
    for dest, src in sorted(etc_files.items()):
        mounts.append(Mount(destination=dest, type="bind", source=src,
                            options=["rbind", "ro", "nosuid", "nodev", "noexec"]))
    return mounts


#: The soft limit of open files a sandbox's processes start with (their hard limit is the
#: engine's): the daemon raises its own soft limit (it holds about 3 descriptors per
#: sandbox), and its processes would inherit that; 1024 is what programs that still use
#: ``select()`` need, and what the engine's user has by default.
SANDBOX_NOFILE = 1024


def sandbox_nofile() -> Rlimit:
    """A sandbox process's ``RLIMIT_NOFILE``: :data:`SANDBOX_NOFILE` (or the engine's hard
    limit, where lower), hard: the engine's."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20  # (the kernel's nr_open default; "unlimited" is no number here)
    return Rlimit(type="RLIMIT_NOFILE", hard=hard, soft=min(SANDBOX_NOFILE, hard))


def process_spec(args: list[str], env: dict[str, str], cwd: str,
                 terminal: tuple[int, int] | None = None) -> Process:
    """The process of a container or exec (``terminal``: on a terminal of these rows and
    columns, whose master the runtime sends to its ``--console-socket``)."""
    return Process(args=args, env=[f"{k}={v}" for k, v in env.items()], cwd=cwd,
                   terminal=terminal is not None,
                   consoleSize=Box(height=terminal[0], width=terminal[1])
                   if terminal is not None else None, rlimits=[sandbox_nofile()])


def sandbox_spec(
    *, rootfs: str, hostname: str, process: Process, etc_files: dict[str, str], devpts_gid: bool,
    host_network: bool = False, extra_mounts: list[Mount] | None = None,
    cgroups_path: str | None = None, netns_path: str | None = None,
    userns_path: str | None = None, id_mappings: list[dict[str, int]] | None = None,
) -> Spec:
    """A sandbox's spec; ``host_network`` (image builds) keeps the host's network namespace,
    and then /sys is a read-only bind of the host's (sysfs needs its own netns);
    ``netns_path``: a network namespace the engine made, for the runtime to join.  Build
    steps get the same seccomp profile as sandboxes: apt, dpkg and pip need nothing it
    refuses.  ``userns_path``: the sandbox's own user namespace
    (:mod:`hutch.engine.isolation.idslices`), which the runtime joins; ``id_mappings``: its
    map, for runtimes that want it stated (runc 1.1 refuses a user namespace without one,
    even one it joins)."""
    mounts = default_mounts(etc_files, devpts_gid=devpts_gid)
    namespaces = NAMESPACES
    if host_network:
        namespaces = [n for n in NAMESPACES if n != "network"]
        mounts = [m if m.destination != "/sys" else
                  Mount(destination="/sys", type="bind", source="/sys",
                        options=["rbind", "ro", "nosuid", "noexec", "nodev"])
                  for m in mounts]
    mounts = [*mounts, *(extra_mounts or [])]
    maps = [IdMapping.model_validate(m) for m in id_mappings] if id_mappings else None
    paths = {"network": netns_path}
    if userns_path is not None:
        namespaces = ["user", *namespaces]
        paths["user"] = userns_path
    return Spec(
        process=process,
        root=Root(path=rootfs),
        hostname=hostname,
        mounts=mounts,
        linux=Linux(namespaces=[Namespace(type=t, path=paths.get(t)) for t in namespaces],
                    uidMappings=maps, gidMappings=maps,
                    seccomp=default_profile(), cgroupsPath=cgroups_path),
        annotations=seccompbpf.default_annotation() or None,
    )
