"""The shared root filesystem and the facts about the machine that go into the report.

All contenders run the *same* Debian root filesystem: the first unpacked layer of hutch's
default base image (the Debian tree with Python; the second adds pip, wheel and uv).  It
is found the way an OCI tool would find it: the engine's OCI layout
(``<data_dir>/oci/index.json``) maps the image reference to a manifest, the manifest names
the image config, and the config's ``rootfs.diff_ids[0]`` names the unpacked directory
``<data_dir>/layers/<hex>``.  If that chain breaks, the largest directory under ``layers/``
is used instead and the report says so.  The peers only ever mount it read-only.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import pwd
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import Unavailable
from hutch.engine.images import bases

REF_ANNOTATION = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class Rootfs:
    """The unpacked root filesystem every contender runs: the Debian tree, the first layer
    of the default image (its second adds pip, wheel and uv)."""

    image: str
    path: Path
    diff_id: str
    manifest_digest: str | None
    how_found: str

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


#: The image every scenario and peer runs (hutch's default, debian_slim).
DEFAULT_IMAGE = bases.default_ref()


def _blob(layout: Path, digest: str) -> dict[str, Any]:
    algo, _, hexpart = digest.partition(":")
    data: dict[str, Any] = json.loads((layout / "blobs" / algo / hexpart).read_text())
    return data


def _from_layout(data_dir: Path, image: str) -> Rootfs:
    layout = data_dir / "oci"
    index = json.loads((layout / "index.json").read_text())
    for desc in index.get("manifests", []):
        if desc.get("annotations", {}).get(REF_ANNOTATION) == image:
            break
    else:
        raise LookupError(f"{image} is not in {layout / 'index.json'}")
    manifest = _blob(layout, desc["digest"])
    config = _blob(layout, manifest["config"]["digest"])
    diff_ids: list[str] = config["rootfs"]["diff_ids"]
    if not diff_ids:
        raise Unavailable(f"{image} has no layers; the peers need its Debian tree")
    path = data_dir / "layers" / diff_ids[0].partition(":")[2]
    if not path.is_dir():
        raise LookupError(f"layer {diff_ids[0]} is not unpacked at {path}")
    return Rootfs(image, path, diff_ids[0], desc["digest"], "oci index -> manifest -> config")


def _tree_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _largest_layer(data_dir: Path, image: str) -> Rootfs:
    layers = [p for p in (data_dir / "layers").iterdir() if p.is_dir()]
    if not layers:
        raise Unavailable(f"no unpacked layers under {data_dir / 'layers'}")
    path = max(layers, key=_tree_size)
    return Rootfs(image, path, f"sha256:{path.name}", None, "largest directory in layers/")


def locate_rootfs(data_dir: Path, image: str) -> Rootfs:
    """The unpacked layer of ``image`` in the engine's data dir; :class:`Unavailable` if none."""
    try:
        rootfs = _from_layout(data_dir, image)
    except (OSError, LookupError, KeyError, ValueError):
        try:
            rootfs = _largest_layer(data_dir, image)
        except OSError as exc:
            raise Unavailable(f"cannot read hutch's layers in {data_dir}: {exc}") from exc
    if not (rootfs.path / "usr" / "bin" / "python3").exists():
        raise Unavailable(f"{rootfs.path} has no /usr/bin/python3")
    return rootfs


def _first_line(path: str, key: str) -> str | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def tool_version(argv: list[str]) -> str | None:
    """First line of ``argv --version`` style output, or None when the tool is missing."""
    try:
        out = subprocess.run(argv, capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).decode(errors="replace").strip()
    return text.splitlines()[0] if text else None


def _os_release() -> str | None:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        return None
    return None


def _cgroup_layout() -> str:
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return "v2 (unified)"
    if os.path.isdir("/sys/fs/cgroup/unified"):
        return "v1 (hybrid)"
    return "v1"


def machine_info() -> dict[str, Any]:
    """Kernel, CPU, cores, memory, user and tool versions: what a reader needs to compare."""
    mem = _first_line("/proc/meminfo", "MemTotal")
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {
        "kernel": platform.release(),
        "kernel_version": platform.version(),
        "arch": platform.machine(),
        "cpu_model": _first_line("/proc/cpuinfo", "model name") or platform.processor(),
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "memory": mem,
        "cgroups": _cgroup_layout(),
        "os": _os_release(),
        "python": platform.python_version(),
        "user": f"{pwd.getpwuid(os.getuid()).pw_name} (uid {os.getuid()})",
        "tools": {
            "crun": tool_version(["crun", "--version"]),
            "podman": tool_version(["podman", "--version"]),
            "bwrap": tool_version(["bwrap", "--version"]),
        },
    }
