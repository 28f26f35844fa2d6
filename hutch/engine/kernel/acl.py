"""POSIX access ACLs, as the kernel stores them (``system.posix_acl_access``), for the one
thing the engine needs: letting a few more ids *pass through* a directory of its own.

Why not ``chmod o+x``: that lets every id through, those of other sandboxes included; an
entry naming the one id that needs it lets only that one (a sandbox's root, which resolves
its root file system's path after entering its own user namespace,
:mod:`hutch.engine.lifecycle.sandboxids`).  Written whole from the mode bits and the ids, so no
``setfacl`` (package ``acl``) is needed.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

XATTR = "system.posix_acl_access"
VERSION = 2
USER_OBJ, USER, GROUP_OBJ, MASK, OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
UNDEFINED_ID = 0xFFFFFFFF
SEARCH = 0o1
_ENTRY = struct.Struct("<HHI")


def encode(mode: int, users: list[int]) -> bytes:
    """The ACL of ``mode``'s owner, group and other bits plus search (x) for ``users``."""
    owner, group, other = (mode >> 6) & 7, (mode >> 3) & 7, mode & 7
    entries = [(USER_OBJ, owner, UNDEFINED_ID)]
    entries += [(USER, SEARCH, uid) for uid in sorted(set(users))]
    entries += [(GROUP_OBJ, group, UNDEFINED_ID), (MASK, group | SEARCH, UNDEFINED_ID),
                (OTHER, other, UNDEFINED_ID)]
    return struct.pack("<I", VERSION) + b"".join(_ENTRY.pack(*e) for e in entries)


def grant_search(path: Path, users: list[int], mode: int = 0o700) -> None:
    """Make ``path`` ``mode`` for its owner, group and others, and searchable by
    ``users`` (engine ids) alone besides; without users, plain ``mode``."""
    if not users:
        os.chmod(path, mode)
        try:
            os.removexattr(path, XATTR)
        except OSError as exc:
            if exc.errno not in (61, 95):  # ENODATA: none; EOPNOTSUPP: no ACLs here
                raise
        return
    os.setxattr(path, XATTR, encode(mode, users))


def search_users(path: Path) -> list[int]:
    """The ids the ACL of ``path`` names (for tests and ``hutch doctor``)."""
    try:
        blob = os.getxattr(path, XATTR)
    except OSError:
        return []
    return [uid for tag, _, uid in _ENTRY.iter_unpack(blob[4:]) if tag == USER]
