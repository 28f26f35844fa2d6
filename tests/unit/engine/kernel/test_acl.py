"""Search-only ACL entries for a few ids, written without setfacl."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import pytest

from hutch.engine.kernel import acl


def test_the_encoding_is_the_kernels() -> None:
    blob = acl.encode(0o750, [300, 200, 300])
    version, = struct.unpack_from("<I", blob)
    entries = list(struct.iter_unpack("<HHI", blob[4:]))
    assert version == 2
    assert entries == [(acl.USER_OBJ, 7, acl.UNDEFINED_ID), (acl.USER, 1, 200),
                       (acl.USER, 1, 300), (acl.GROUP_OBJ, 5, acl.UNDEFINED_ID),
                       (acl.MASK, 5, acl.UNDEFINED_ID), (acl.OTHER, 0, acl.UNDEFINED_ID)]


def test_named_ids_may_pass_and_nobody_else(tmp_path: Path) -> None:
    target = tmp_path / "dir"
    target.mkdir(mode=0o700)
    try:
        acl.grant_search(target, [123456])
    except OSError as exc:
        pytest.skip(f"no POSIX ACLs on {tmp_path}: {exc}")
    assert acl.search_users(target) == [123456]
    mode = stat.S_IMODE(target.stat().st_mode)
    assert mode == 0o710  # the group bits show the mask; "other" still has nothing
    acl.grant_search(target, [])
    assert acl.search_users(target) == []
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o700
