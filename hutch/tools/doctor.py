"""``hutch doctor``: check every host requirement and say exactly how to fix each.

Each check is a function returning a :class:`Check`; none needs root or a running engine,
but when an engine answers its own view (which runtime it chose and why, how its user
namespace is mapped) is reported too.
"""

from __future__ import annotations

import ctypes.util
import os
import platform
import pwd
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hutch.api import urls
from hutch.engine.isolation import idslices
from hutch.engine.isolation.cgroups import CgroupHost
from hutch.engine.kernel.userns import subid_range
from hutch.engine.storage.diskslots import DiskSlots

Status = Literal["ok", "warn", "fail"]

#: binary -> (Debian package, what it is for, required?)
BINARIES: dict[str, tuple[str, str, bool]] = {
    "crun": ("crun", "the preferred OCI runtime", False),
    "runc": ("runc", "the fallback OCI runtime", True),
    "newuidmap": ("uidmap", "mapping the subordinate uid range", True),
    "newgidmap": ("uidmap", "mapping the subordinate gid range", True),
    "unshare": ("util-linux", "making each sandbox's user namespace", True),
    "nsenter": ("util-linux", "making each sandbox's network namespace in it", True),
    "cp": ("coreutils", "holding the layers of images in use in memory", True),
    "mmdebstrap": ("mmdebstrap", "building the Debian base image", True),
    "tar": ("tar", "packing and unpacking image layers", True),
    "umoci": ("umoci", "OCI image interop (image builder)", False),
    "skopeo": ("skopeo", "pulling images from registries (image builder)", False),
    "slirp4netns": ("slirp4netns", "outbound networking for sandboxes", True),
    "openssl": ("openssl", "the engine's CA for encrypted ports and remote clients", False),
    "ssh": ("openssh-client", "reaching an engine on another machine (ssh://)", False),
    "zstd": ("zstd", "importing zstd-compressed image layers", False),
}


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


#: shared library -> (Debian package, what it is for, required?)
LIBRARIES: dict[str, tuple[str, str, bool]] = {
    "nftables": ("libnftables1", "the firewall of sandboxes with network access", True),
    "seccomp": ("libseccomp2", "compiling the seccomp profile once per engine", False),
}


def check_libraries() -> list[Check]:
    out = []
    for name, (package, purpose, required) in LIBRARIES.items():
        found = ctypes.util.find_library(name)
        if found:
            out.append(Check(f"lib{name}", "ok", f"{found} ({purpose})"))
        else:
            out.append(Check(f"lib{name}", "fail" if required else "warn",
                             f"missing: {purpose}", f"apt-get install {package}"))
    return out


def check_python() -> Check:
    ok = sys.version_info >= (3, 11)
    return Check("python", "ok" if ok else "fail", platform.python_version(),
                 "" if ok else "install Python >= 3.11 (Debian 12: apt-get install python3)")


def check_binaries() -> list[Check]:
    out = []
    for binary, (package, purpose, required) in BINARIES.items():
        path = shutil.which(binary) or (f"/usr/sbin/{binary}"
                                        if os.path.exists(f"/usr/sbin/{binary}") else None)
        if path:
            out.append(Check(binary, "ok", f"{path} ({purpose})"))
        else:
            out.append(Check(binary, "fail" if required else "warn", f"missing: {purpose}",
                             f"apt-get install {package}"))
    return out


def check_subids() -> Check:
    if os.geteuid() == 0:
        return Check("subuid/subgid", "ok", "running as root: no user namespace needed")
    uid = os.getuid()
    name = pwd.getpwuid(uid).pw_name
    su, sg = subid_range("/etc/subuid", uid), subid_range("/etc/subgid", uid)
    if su and sg:
        at_once = idslices.capacity(min(su.count, sg.count))
        if at_once == 0:
            return Check("subuid/subgid", "warn",
                         f"{su.count} uids, {sg.count} gids: too few for sandboxes with ids "
                         "of their own, so they share the engine's (docs/security.md)",
                         f"as root: usermod --add-subuids {idslices.EXAMPLE_RANGE} "
                         f"--add-subgids {idslices.EXAMPLE_RANGE} {name}")
        return Check("subuid/subgid", "ok", f"{su.count} uids from {su.start}, "
                     f"{sg.count} gids from {sg.start}: {at_once} sandboxes of 1025 ids "
                     "(debian_slim) at once, each under ids of its own")
    return Check("subuid/subgid", "warn",
                 "no subordinate id range: sandboxes map a single uid (images whose files "
                 "belong to other users will fail)",
                 f"as root: usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {name}")


def check_userns() -> Check:
    try:
        limit = int(Path("/proc/sys/user/max_user_namespaces").read_text())
    except (OSError, ValueError):
        limit = 0
    if limit == 0:
        return Check("user namespaces", "fail", "user.max_user_namespaces is 0",
                     "as root: sysctl -w user.max_user_namespaces=15000")
    clone = Path("/proc/sys/kernel/unprivileged_userns_clone")
    if clone.exists() and clone.read_text().strip() == "0":
        return Check("user namespaces", "fail", "kernel.unprivileged_userns_clone is 0",
                     "as root: sysctl -w kernel.unprivileged_userns_clone=1")
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return Check("user namespaces", "fail", f"unshare failed: {probe.stderr.strip()}",
                     "enable unprivileged user namespaces (AppArmor: "
                     "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0)")
    return Check("user namespaces", "ok", f"max {limit}")


def check_kernel() -> Check:
    release = platform.release()
    try:
        major, minor = (int(x) for x in release.split(".")[:2])
    except ValueError:
        return Check("kernel", "warn", f"cannot parse {release}")
    ok = (major, minor) >= (5, 11)
    return Check("kernel", "ok" if ok else "fail", f"{release} (overlayfs in a user namespace "
                 "needs >= 5.11)", "" if ok else "upgrade the kernel to 5.11 or newer")


def cgroup_layout() -> tuple[str, list[str]]:
    """("v2" | "v1" | "hybrid", controllers enabled on the v2 hierarchy of a hybrid host)."""
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    fstypes = {line.split()[1]: line.split()[2] for line in mounts if len(line.split()) > 2}
    if fstypes.get("/sys/fs/cgroup") == "cgroup2":
        return "v2", []
    unified = "/sys/fs/cgroup/unified"
    if fstypes.get(unified) == "cgroup2":
        try:
            ctrls = Path(unified, "cgroup.controllers").read_text().split()
        except OSError:
            ctrls = []
        return "hybrid", ctrls
    return "v1", []


def check_cgroups() -> Check:
    layout, ctrls = cgroup_layout()
    if layout == "hybrid" and ctrls:
        return Check("cgroups", "warn",
                     f"hybrid cgroups with {', '.join(ctrls)} on the v2 hierarchy: crun refuses "
                     "to run here, hutch falls back to runc (slower to start)",
                     "as root: mkdir -p /sys/fs/cgroup/hugetlb && mount -t cgroup -o hugetlb "
                     "cgroup /sys/fs/cgroup/hugetlb (tools/setup-host.sh does it)")
    return Check("cgroups", "ok", layout + (" (no controllers on the v2 hierarchy)"
                                            if layout == "hybrid" else ""))


def check_limits() -> list[Check]:
    """Which sandbox limits this user's engine could enforce, and how to enable the rest."""
    from hutch.engine.isolation import cgroups

    root = os.geteuid() == 0
    host = cgroups.detect(pwd.getpwuid(os.getuid()).pw_name, root=root, probe=True)
    checks = []
    for controller, what in (("memory", "memory="), ("cpu", "cpu="),
                             ("pids", "pids_limit (and the default of 2048)")):
        if controller in host.bases:
            checks.append(Check(f"limit: {controller}", "ok",
                                f"{what} enforced (cgroup v{host.version}, "
                                f"{host.bases[controller]})"))
        else:
            checks.append(Check(f"limit: {controller}", "warn",
                                f"{what} cannot be enforced: sandboxes asking for it are "
                                "refused, and sandboxes get no default", host.problem))
    if "memory" in host.bases:
        checks.append(check_sandboxes_memory(host.bases["memory"], host.version))
    checks.append(check_sandbox_defaults(host))
    if "memory" in host.bases:
        checks.append(check_swap(host.bases["memory"], host.version))
    if host.bases:
        mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
        cgroup2 = [m for m in mounts if len(m) > 3 and m[2] == "cgroup2"]
        fast = any("favordynmods" in m[3].split(",") for m in cgroup2)
        checks.append(Check(
            "cgroup moves", "ok" if fast or not cgroup2 else "warn",
            "fast (favordynmods)" if fast else
            "each sandbox start and exec waits 5-15 ms for an RCU grace period",
            f"as root: mount -o remount,favordynmods {cgroup2[0][1]} "
            "(tools/setup-host.sh does it)" if cgroup2 and not fast else ""))
    release = platform.release().split(".")
    try:
        tmpfs_xattrs = root or (int(release[0]), int(release[1].split("-")[0])) >= (6, 6)
    except (IndexError, ValueError):
        tmpfs_xattrs = False
    checks.append(Check("limit: ephemeral_disk", "ok" if tmpfs_xattrs else "warn",
                        "enforced (a size-limited tmpfs under each sandbox's overlay)"
                        if tmpfs_xattrs else "needs Linux >= 6.6 (user xattrs on tmpfs) "
                        "for a rootless engine", "" if tmpfs_xattrs else
                        "upgrade the kernel, or run the engine as root"))
    checks.append(check_disk_slots())
    return checks


def check_disk_slots() -> Check:
    """Whether each sandbox's writes are bounded (:mod:`hutch.engine.storage.diskslots`): said
    loudly without slots, the one resource a default sandbox could then exhaust on the
    host (a rootless engine has no disk quota to set itself)."""
    slots = DiskSlots.for_engine(Path("."))
    volumes = DiskSlots.for_volumes(Path("."))
    if slots.enabled:
        of_volumes = (f"; {len(volumes.slots)} volume slots of "
                      f"{volumes.size_mib(volumes.slots[0])} MiB, one per volume"
                      if volumes.enabled else "; volumes are not bounded")
        return Check("limit: disk", "ok",
                     f"{len(slots.slots)} disk slots of {slots.size_mib(slots.slots[0])} MiB "
                     f"under {slots.root}: each sandbox writes on one (ENOSPC past it), "
                     f"{len(slots.slots)} sandboxes at once{of_volumes}")
    return Check("limit: disk", "warn",
                 f"no disk slots under {slots.root}: a sandbox without ephemeral_disk (and "
                 "any volume) can fill the disk of the engine's data dir",
                 "as root: tools/setup-host.sh (HUTCH_DISK_SLOTS, HUTCH_DISK_SLOT_GIB), or "
                 "give untrusted sandboxes ephemeral_disk=MiB (a tmpfs of that size)")


#: What cgroup v1 shows for "no limit" (the largest page-aligned value).
V1_UNLIMITED = 1 << 62


def check_sandboxes_memory(base: Path, version: int) -> Check:
    """Whether the cgroup all of this user's sandboxes live under has a memory limit: without
    one, sandboxes that each stay within theirs can still, together, leave the host's OOM
    killer as the only bound (setup-host.sh sets 75% of the host's memory on v1)."""
    name = "memory.limit_in_bytes" if version == 1 else "memory.max"
    try:
        value = (base / name).read_text().strip()
    except OSError as exc:
        return Check("limit: all sandboxes", "warn", f"cannot read {base / name}: {exc}")
    limit = None if value == "max" or int(value) >= V1_UNLIMITED else int(value)
    if limit is None:
        return Check("limit: all sandboxes", "warn",
                     f"no memory limit on {base}: together, sandboxes are bounded only by "
                     "the host's OOM killer",
                     f"as root: echo <bytes> > {base / name} (tools/setup-host.sh sets 75% "
                     "of the host's memory)")
    return Check("limit: all sandboxes", "ok",
                 f"at most {limit >> 20} MiB of memory together ({base})")


def check_sandbox_defaults(host: CgroupHost) -> Check:
    """The memory and CPU limits a sandbox that sets none gets from an engine started with
    this environment (``HUTCH_DEFAULT_MEMORY_MIB``, ``HUTCH_DEFAULT_CPU``)."""
    from hutch.engine.lifecycle import sandboxlimits

    found = sandboxlimits.defaults(host)
    parts, undelegated, off = [], False, False
    for controller, value, why in (
            ("memory", f"{found.memory_mib} MiB" if found.memory_mib else None,
             found.memory_why),
            ("cpu", f"{found.cpu:g} core{'' if found.cpu == 1 else 's'}" if found.cpu
             else None, found.cpu_why)):
        if controller not in host.bases:
            undelegated = True
            parts.append(f"{controller} unlimited (not delegated)")
        elif value is None:
            off = True
            parts.append(f"{controller} unlimited ({why})")
        else:
            parts.append(f"{controller} {value} ({why})")
    detail = "a sandbox that sets no limit gets " + ", ".join(parts)
    if found.problems:
        return Check("limit: sandbox default", "warn", detail + "; " + "; ".join(
            found.problems), "fix the setting, then `hutch engine stop`")
    if undelegated or off:
        return Check("limit: sandbox default", "warn", detail, host.problem if undelegated
                     else f"unset {sandboxlimits.MEMORY_ENV} and {sandboxlimits.CPU_ENV} "
                     "(0 turns a default off), then `hutch engine stop`")
    return Check("limit: sandbox default", "ok", detail)


def check_swap(base: Path, version: int) -> Check:
    """Whether a sandbox's memory limit counts its swap: without swap accounting a sandbox
    at its limit could go on growing into the host's swap."""
    try:
        swaps = Path("/proc/swaps").read_text().splitlines()[1:]
    except OSError:
        swaps = []
    if not swaps:
        return Check("limit: swap", "ok", "the host has no swap: memory limits are RAM")
    name = "memory.memsw.limit_in_bytes" if version == 1 else "memory.swap.max"
    if (base / name).exists():
        return Check("limit: swap", "ok", "counted within each sandbox's memory limit "
                     f"({name})")
    return Check("limit: swap", "warn",
                 "the host has swap and no swap accounting: a sandbox at its memory limit "
                 "is kept from swapping (v1: memory.swappiness 0) only where the kernel "
                 "allows", "boot with swapaccount=1 (v1), or without cgroup.memory=noswap")


def check_tun() -> Check:
    try:
        mode = stat.S_IMODE(os.stat("/dev/net/tun").st_mode)
    except OSError:
        return Check("/dev/net/tun", "warn", "missing: sandbox networking will not work",
                     "as root: modprobe tun")
    if mode & 0o006 != 0o006 and os.geteuid() != 0:
        return Check("/dev/net/tun", "warn", f"mode {mode:o}: slirp4netns cannot open it",
                     "as root: chmod 0666 /dev/net/tun (tools/setup-host.sh does it)")
    return Check("/dev/net/tun", "ok", f"mode {mode:o}")


#: Makes a bridge and a veth pair in a new user and network namespace: what the engine does
#: for a private network (hutch.Network); the kernel loads ``bridge`` and ``veth`` on use.
BRIDGE_PROBE = """
from pyroute2 import IPRoute
with IPRoute() as ipr:
    ipr.link("add", ifname="probe0", kind="bridge")
    ipr.link("add", ifname="probe1", kind="veth", peer={"ifname": "probe2"})
"""


def check_private_networks() -> Check:
    try:
        probe = subprocess.run(["unshare", "--user", "--map-root-user", "--net",
                                sys.executable, "-c", BRIDGE_PROBE],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("private networks", "warn", f"could not probe: {exc}")
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["no reason given"])[-1]
        return Check("private networks", "warn", "no bridge or veth pair in a user namespace "
                     f"(hutch.Network will fail): {reason}", "as root: modprobe bridge veth")
    return Check("private networks", "ok", "bridge and veth pairs in a user namespace")


def check_engine() -> list[Check]:
    from hutch.exception import Error
    from hutch.sdk.transport import request_blocking

    try:
        info = request_blocking("GET", urls.ENGINE, autostart=False)
    except Error:
        return [Check("engine", "ok", "not running (clients start it on first use)")]
    checks = [Check("engine", "ok", f"pid {info['pid']}, version {info['version']}")]
    if info["runtime_fallback_reason"]:
        checks.append(Check("runtime", "warn", f"{info['runtime']}: "
                            f"{info['runtime_fallback_reason']}",
                            "see the cgroups check above"))
    else:
        checks.append(Check("runtime", "ok", info["runtime"]))
    mode = info["userns_mode"]
    checks.append(Check("engine user namespace", "warn" if mode == "single" else "ok", mode,
                        "add a subuid/subgid range, then `hutch engine stop`"
                        if mode == "single" else ""))
    return checks


CHECKS: list[Callable[[], Check | list[Check]]] = [
    check_python, check_binaries, check_libraries, check_kernel, check_userns, check_subids,
    check_cgroups, check_limits, check_tun, check_private_networks, check_engine,
]


def run_checks() -> list[Check]:
    results: list[Check] = []
    for check in CHECKS:
        result = check()
        results.extend(result if isinstance(result, list) else [result])
    return results


def report(checks: list[Check]) -> str:
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    lines = []
    for c in checks:
        lines.append(f"[{marks[c.status]}] {c.name}: {c.detail}")
        if c.fix and c.status != "ok":
            lines.append(f"       fix: {c.fix}")
    return "\n".join(lines)
