"""Who a command runs as: ``exec(..., user=...)`` looked up in the sandbox's own
``/etc/passwd`` and ``/etc/group``, as ``podman exec --user`` and ``docker exec -u`` do.

The zygote (:mod:`hutch.engine.commands.forkserver`) reads them after joining the sandbox's
mount namespace, so the files are the sandbox's, written by code nobody has read: each may be
a FIFO nobody writes (an open would block the zygote, and every exec of its sandbox, for good),
a device, a symlink or a huge file.  Only a regular file is read, opened without blocking,
and only its first ``DB_MAX`` bytes.  Standard library only: the zygote imports nothing else.

The rules are Docker's, which agent frameworks and users expect:

* ``name`` or ``uid``, optionally ``:group`` (a name or a gid);
* a name must be in ``/etc/passwd``; a uid need not be (its group is then 0 and its home
  ``/``, as ``docker exec -u 1234`` gives);
* the supplementary groups are those ``/etc/group`` lists the user's name in, plus the
  primary group.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

#: Bytes of ``/etc/passwd`` or ``/etc/group`` read at most (a 1 MiB passwd holds ~20,000 users).
DB_MAX = 1 << 20
#: The highest id a user or group may have (``(uid_t) -1`` means "unchanged" to the kernel).
ID_MAX = (1 << 32) - 2
#: Supplementary groups at most (the kernel's NGROUPS_MAX is 65536; a process rarely needs 32).
GROUPS_MAX = 256
#: A user or group name as ``useradd`` accepts it, or a number.
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?")


class UnknownUser(LookupError):
    """The user or group is in neither the spec's numbers nor the sandbox's files."""


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def check_spec(spec: str) -> tuple[str, str | None]:
    """``user[:group]`` split, each part a name or a number; ValueError otherwise."""
    user, sep, group = spec.partition(":")
    for part in (user, group) if sep else (user,):
        if not NAME.fullmatch(part):
            raise ValueError(f"bad user {spec!r}: expected NAME or UID, optionally :GROUP or "
                             ":GID (letters, digits, `_`, `.`, `-`; at most 32)")
        if part.isdigit() and int(part) > ID_MAX:
            raise ValueError(f"bad user {spec!r}: ids go up to {ID_MAX}")
    return user, group if sep else None


def read_db(path: str) -> list[list[str]]:
    """The colon-separated records of a passwd-style file; empty if it is not a readable
    regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        data = os.read(fd, DB_MAX)
    except OSError:
        return []
    finally:
        os.close(fd)
    return [line.split(":") for line in data.decode(errors="replace").splitlines()
            if line and not line.startswith("#")]


def _number(text: str) -> int | None:
    return int(text) if text.isdigit() and int(text) <= ID_MAX else None


def resolve(spec: str, passwd: str = "/etc/passwd", group: str = "/etc/group") -> Identity:
    """The ids ``spec`` names in this mount namespace's files (the sandbox's, in a zygote)."""
    user, group_spec = check_spec(spec)
    users = [r for r in read_db(passwd) if len(r) >= 7 and _number(r[2]) is not None
             and _number(r[3]) is not None]
    entry = next((r for r in users if r[0] == user), None)
    if entry is None and user.isdigit():
        entry = next((r for r in users if r[2] == user), None)
    if entry is None and not user.isdigit():
        raise UnknownUser(f"unable to find user {user}: no matching entries in passwd file")
    uid = int(entry[2]) if entry is not None else int(user)
    gid = int(entry[3]) if entry is not None else 0
    home = (entry[5] or "/") if entry is not None else "/"
    groups = [r for r in read_db(group) if len(r) >= 4 and _number(r[2]) is not None]
    if group_spec is not None:
        found = next((r for r in groups if r[0] == group_spec), None)
        if found is None and group_spec.isdigit():
            gid = int(group_spec)
        elif found is None:
            raise UnknownUser(f"unable to find group {group_spec}: no matching entries in "
                              "group file")
        else:
            gid = int(found[2])
    extra = [gid]
    if entry is not None:
        extra += [int(r[2]) for r in groups if entry[0] in r[3].split(",")]
    return Identity(uid, gid, tuple(dict.fromkeys(extra))[:GROUPS_MAX], home)


def home_of(uid: int, passwd: str = "/etc/passwd") -> str:
    """The home directory ``passwd`` gives ``uid`` (``/`` when it gives none)."""
    for record in read_db(passwd):
        if len(record) >= 6 and record[2] == str(uid):
            return record[5] or "/"
    return "/"


class RootHome:
    """Root's home directory in ``passwd`` (``/`` when it gives none), the HOME of every
    command a zygote starts without one, as runc and crun set it.  The file is read again
    only when its identity (device, inode, size, modification and change times: the
    latter no one can set back) changed: a stat per command instead of an open, a read
    and a parse."""

    def __init__(self, passwd: str = "/etc/passwd") -> None:
        self.passwd = passwd
        self._seen: tuple[tuple[int, ...], str] | None = None

    def get(self) -> str:
        try:
            st = os.stat(self.passwd)
        except OSError:
            return "/"
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if self._seen is None or self._seen[0] != key:
            self._seen = (key, home_of(0, self.passwd))
        return self._seen[1]


def unmapped(ids: Identity, uid_map: str = "/proc/1/uid_map",
             gid_map: str = "/proc/1/gid_map") -> str | None:
    """Why ``ids`` cannot be taken in this user namespace (an id outside its maps), or None.

    Each sandbox has ids of its own, as many as its image's files need and at least 1,024,
    plus ``nobody`` (:mod:`hutch.engine.isolation.idslices`): ``setresuid`` to any other id
    fails with a bare EINVAL, which this turns into the reason.  The maps are the sandbox's
    init's (a zygote is outside the pid namespace whose ``/proc`` it sees: no ``self``)."""
    for kind, number, path in (("user", ids.uid, uid_map), ("group", ids.gid, gid_map)):
        ranges = _ranges(path)
        if ranges and not any(start <= number < start + size for start, size in ranges):
            shown = ", ".join(f"{s}" if n == 1 else f"{s}-{s + n - 1}" for s, n in ranges)
            return (f"{kind} id {number} is not mapped in this sandbox (its ids: {shown}; "
                    "an image with files owned by higher ids gets more)")
    return None


def _ranges(path: str) -> list[tuple[int, int]]:
    try:
        with open(path) as f:
            lines = f.read(65536).splitlines()
    except OSError:
        return []
    ranges = []
    for line in lines:
        fields = line.split()
        if len(fields) == 3 and all(f.isdigit() for f in fields):
            ranges.append((int(fields[0]), int(fields[2])))
    return ranges
