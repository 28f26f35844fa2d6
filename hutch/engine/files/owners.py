"""Who owns a sandbox's files, as the sandbox itself would say: its ids, and the names its
own ``/etc/passwd`` and ``/etc/group`` give them (what ``ls -l`` shows inside).

Why here: a sandbox with ids of its own (:mod:`hutch.engine.isolation.idslices`) has its
files owned by engine ids ``base..base+size``, which mean nothing to its user; and a
user's names live in the image, not on the host.  The two files are read as any file a
sandbox controls (regular files only, at most 1 MiB each, through the sandbox's root);
one that cannot be read gives numbers instead of names, never an error.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from hutch.engine.errors import EngineError
from hutch.engine.files.sandboxfs import Entry, FileError, SandboxFS
from hutch.engine.isolation.idslices import Slice

#: Most bytes read of /etc/passwd or /etc/group.
MAX_NAMES_FILE = 1 << 20
#: What a file owned by an id outside the sandbox's map shows as (the kernel's overflow id).
OVERFLOW_ID = 65534


def seen_by(ids: Slice | None) -> Callable[[int], int]:
    """Engine id -> the id the sandbox sees (its own slice's, else the engine's)."""
    if ids is None:
        return lambda engine_id: engine_id
    return lambda engine_id: (engine_id - ids.base if ids.base <= engine_id < ids.base
                              + ids.span else OVERFLOW_ID)


def _read_names(fs: SandboxFS, path: str) -> dict[int, str]:
    try:
        fd = fs.open_regular(path, os.O_RDONLY)
    except (FileError, EngineError):
        return {}
    try:
        data = os.read(fd, MAX_NAMES_FILE)
    except OSError:
        return {}
    finally:
        os.close(fd)
    names: dict[int, str] = {}
    for line in data.decode(errors="replace").splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdigit():
            names.setdefault(int(fields[2]), fields[0])
    return names


def name_maps(fs: SandboxFS) -> tuple[dict[int, str], dict[int, str]]:
    """The sandbox's user and group names by id (empty where unreadable)."""
    return _read_names(fs, "/etc/passwd"), _read_names(fs, "/etc/group")


def described(entry: Entry, seen: Callable[[int], int], users: dict[int, str],
              groups: dict[int, str]) -> dict[str, Any]:
    """An entry as the files API answers it: the listing row, with owner and link."""
    uid, gid = seen(entry.uid), seen(entry.gid)
    return {"name": entry.name, "type": entry.type, "size": entry.size, "mode": entry.mode,
            "mtime": entry.mtime, "uid": uid, "gid": gid, "owner": users.get(uid, str(uid)),
            "group": groups.get(gid, str(gid)), "link": entry.link}
