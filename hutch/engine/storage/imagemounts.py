"""Images mounted into running sandboxes (``sb.mount_image``): each an overlay of the
image's layers with a fresh upper directory of its own, so the sandbox may change what
it sees there (copy-on-write, as on Modal) and every change goes with the unmount.

The overlay is made in the engine's namespace, beside the sandbox's own root: a sandbox
with ids of its own sees the layers through its id map (the in-memory copies of
:mod:`hutch.engine.storage.layermirror`, held for the sandbox until it ends, bound
idmapped), and the upper directory lies where the sandbox's own writable layer does (its
disk slot or ``ephemeral_disk`` tmpfs), so what it writes there counts in its disk limit.
Only a detached clone of the overlay is kept (:func:`hutch.engine.kernel.mountns.clone`),
to be moved into the sandbox; the staging mounts are gone before the call returns, so
nothing of it is left mounted in the sandbox's directory, where cleanup removes files.

Which mounts a sandbox has is kept in ``imagemounts.json`` in its directory (path ->
number, mount id and layers), so a restarted daemon can still unmount them and holds
their layers' in-memory copies again.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from hutch.engine.kernel import linux, mountns, trees
from hutch.engine.storage import layermirror
from hutch.engine.storage.rootfs import SandboxDirs

RECORDS = "imagemounts.json"
#: The most a mount's option string may hold (one page): each layer is a path in it.
MAX_OPTIONS = 4000


def data_dir(dirs: SandboxDirs, number: int) -> Path:
    """The upper and work directories of mount ``number``: beside the sandbox's upper."""
    return dirs.upper.resolve().parent / f"imagemount-{number}"


def prepare(dirs: SandboxDirs, number: int, layers: list[Path], *, owner: int | None,
            userns_fd: int | None) -> int:
    """A detached overlay of ``layers`` (bottom first) with a fresh upper directory owned
    by ``owner`` (the sandbox's root; None: the engine's); ``userns_fd``: the sandbox's
    user namespace, through whose map ``layers`` (in-memory copies) are seen.  Returns
    the mount's descriptor (the caller closes it)."""
    stage = dirs.root / f"imagemount-{number}.stage"
    data = data_dir(dirs, number)
    stage.mkdir(mode=0o700)
    try:
        for name in ("upper", "work"):
            (data / name).mkdir(parents=True, mode=0o755)
        if owner is not None:
            os.chown(data / "upper", owner, owner)
        if not layers:  # an empty image (from_scratch): overlay needs one lower
            (stage / "empty").mkdir()
            lowers = [stage / "empty"]
        elif userns_fd is not None:
            lowers = layermirror.mount_lowers(layers, stage / "lower", userns_fd)
        else:
            lowers = list(layers)
        merged = stage / "merged"
        merged.mkdir()
        options = (f"userxattr,lowerdir={':'.join(str(p) for p in reversed(lowers))},"
                   f"upperdir={data / 'upper'},workdir={data / 'work'}")
        if len(options) > MAX_OPTIONS:
            raise mountns.MountRefused(f"the image has too many layers ({len(layers)}) "
                                       "to be mounted")
        linux.mount("overlay", str(merged), "overlay", linux.MS_NODEV, options)
        try:
            return mountns.clone(str(merged))
        finally:
            linux.umount(str(merged), linux.MNT_DETACH)
    except BaseException:
        trees.remove_tree(data)
        raise
    finally:
        layermirror.unmount_lowers(stage / "lower")
        with contextlib.suppress(OSError):
            (stage / "merged").rmdir()
        with contextlib.suppress(OSError):
            (stage / "empty").rmdir()
        with contextlib.suppress(OSError):
            stage.rmdir()


def discard(dirs: SandboxDirs, number: int) -> None:
    """Remove what the sandbox wrote into mount ``number`` (after its unmount)."""
    trees.remove_tree(data_dir(dirs, number))


Records = dict[str, dict[str, Any]]


def load(dirs: SandboxDirs) -> Records:
    """Path asked for -> ``{"number", "mount_id", "seen"}`` (where it resolved in the
    sandbox) and ``"layers"`` (the image's unpacked-layer names) of its image mounts."""
    try:
        doc = json.loads((dirs.root / RECORDS).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    return {str(k): {"number": int(v["number"]), "mount_id": int(v["mount_id"]),
                     "seen": str(v.get("seen", k)),
                     "layers": [str(n) for n in v.get("layers", [])]}
            for k, v in doc.items()}


def layer_names(dirs: SandboxDirs) -> list[str]:
    """The layers of every image mounted in the sandbox (unpacked-layer directory names)."""
    return sorted({name for record in load(dirs).values() for name in record["layers"]})


def save(dirs: SandboxDirs, records: Records) -> None:
    tmp = dirs.root / (RECORDS + ".tmp")
    tmp.write_text(json.dumps(records))
    tmp.rename(dirs.root / RECORDS)


def next_number(dirs: SandboxDirs, records: Records) -> int:
    """A number no mount of the sandbox uses, nor left data under."""
    number = max((int(r["number"]) for r in records.values()), default=0) + 1
    while data_dir(dirs, number).exists():
        number += 1
    return number
