"""The ids of volumes' files (hutch/engine/storage/volumeids.py) against the real engine: a
sandbox that mounts volumes runs with their slice (not the engine's ids), whoever wrote a
file (a sandbox, the files API, a sandbox of an engine that shared its ids) its owner is
the same inside every sandbox that mounts it, and volumes of different slices are joined
only when no running sandbox needs the old ids.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import hutch as modal
from hutch.exception import ConflictError
from hutch.sdk.transport import request_blocking
from tests.helpers import engine_dirs, stop_engine
from tests.integration.test_volumes import app, box, new_volume, ok, run, upload

__all__ = ["app", "new_volume"]  # fixtures, used by name


def _needs_own_ids(engine: dict[str, Any]) -> None:
    if engine.get("userns_mode") != "subuid" or os.environ.get("HUTCH_USERNS") == "shared":
        pytest.skip("sandboxes share the engine's ids here (no subordinate id range)")


def _root_maps_to(sb: modal.Sandbox) -> int:
    """The id the sandbox's root is in the namespace above its own (the engine's, or
    the host's for a sandbox that shares the engine's)."""
    line = next(line.split() for line in ok(sb, "cat /proc/self/uid_map").splitlines()
                if line.split()[0] == "0")
    return int(line[1])


def test_every_writer_gives_the_same_owner(engine: dict[str, Any], app: modal.App,
                                           new_volume: Callable[[], modal.Volume],
                                           tmp_path: Path) -> None:
    _needs_own_ids(engine)
    vol = new_volume()
    upload(vol, tmp_path, {"before/a.txt": b"a\n"})  # before any sandbox mounted it
    first = box(app, {"/v": vol})
    assert _root_maps_to(first) not in (0, os.getuid()), "it shares the engine's ids"
    ok(first, "mkdir /v/made && echo b > /v/made/b.txt && chown 1000:1000 /v/made/b.txt")
    upload(vol, tmp_path, {"after/c.txt": b"c\n"})  # while it is mounted
    second = box(app, {"/w": vol})
    assert _root_maps_to(second) == _root_maps_to(first)
    assert ok(second, "cd /w && stat -c '%u:%g %n' . before before/a.txt made made/b.txt "
                      "after after/c.txt") == (
        "0:0 .\n0:0 before\n0:0 before/a.txt\n0:0 made\n1000:1000 made/b.txt\n"
        "0:0 after\n0:0 after/c.txt\n")
    ok(second, "echo more >> /w/before/a.txt && echo more >> /w/after/c.txt")
    assert b"".join(vol.read_file("before/a.txt")) == b"a\nmore\n"


def test_a_volume_written_with_the_engines_ids_moves_at_its_next_mount(
        engine: dict[str, Any], app: modal.App, new_volume: Callable[[], modal.Volume],
        tmp_path: Path) -> None:
    """A volume written by sandboxes of an engine that shared its ids (as every engine did
    before): at the next mount its files get the volume's slice, set-user-id bits kept,
    and links a sandbox planted to the host's files move nothing on the host."""
    _needs_own_ids(engine)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file").write_text("host\n")
    vol = new_volume()
    stop_engine()
    with engine_dirs(os.environ["HUTCH_RUNTIME_DIR"], os.environ["HUTCH_DATA_DIR"],
                     HUTCH_USERNS="shared"):
        try:
            shared = box(app, {"/v": vol})
            assert _root_maps_to(shared) == os.getuid()  # (the host's: its parent)
            ok(shared, f"mkdir -p /v/d/e && echo x > /v/d/e/f && cp /bin/true /v/suid && "
                       f"chown 1000:1000 /v/suid && chmod 4755 /v/suid && "
                       f"chown 65534:65534 /v/d/e/f && ln -s {victim} /v/dirlink && "
                       f"ln -s {victim}/file /v/filelink")
        finally:
            stop_engine()
    sb = box(app, {"/v": vol})
    assert _root_maps_to(sb) not in (0, os.getuid())
    assert ok(sb, "cd /v && stat -c '%u:%g %a %n' . d d/e d/e/f suid") == (
        "0:0 755 .\n0:0 755 d\n0:0 755 d/e\n65534:65534 644 d/e/f\n1000:1000 4755 suid\n")
    ok(sb, "echo y >> /v/d/e/f && touch /v/d/new")
    assert os.lstat(victim).st_uid == os.getuid()
    assert os.lstat(victim / "file").st_uid == os.getuid()


def test_volumes_with_other_ids_join_only_when_no_sandbox_holds_them(
        engine: dict[str, Any], app: modal.App,
        new_volume: Callable[[], modal.Volume]) -> None:
    _needs_own_ids(engine)
    one, two = new_volume(), new_volume()
    a, b = box(app, {"/one": one}), box(app, {"/two": two})
    assert _root_maps_to(a) != _root_maps_to(b)  # volumes of their own: ids of their own
    ok(a, "echo 1 > /one/f")
    ok(b, "echo 2 > /two/f")
    with pytest.raises(ConflictError, match="different user ids"):
        box(app, {"/one": one, "/two": two})
    b.terminate(wait=True)
    both = box(app, {"/one": one, "/two": two})  # `two` moves to `one`'s ids
    assert _root_maps_to(both) == _root_maps_to(a)
    assert ok(both, "stat -c '%u:%g' /one/f /two/f; echo 3 >> /two/f; cat /two/f") == \
        "0:0\n0:0\n2\n3\n"


def test_the_engines_view_of_a_volume_mount_is_as_restricted(
        engine: dict[str, Any], app: modal.App, new_volume: Callable[[], modal.Volume]) -> None:
    """Where the engine binds a volume for the sandbox's root to reach, that mount is
    read-only for a read-only volume and never honours set-user-id files or devices: the
    sandbox's root reaching the engine's mounts (an escape) gets no more than inside."""
    _needs_own_ids(engine)
    vol = new_volume()
    sb = box(app, {"/ro": vol.with_mount_options(read_only=True)})
    daemon = int(request_blocking("GET", "/v1/engine")["pid"])
    staged = [line.split() for line in Path(f"/proc/{daemon}/mountinfo").read_text()
              .splitlines() if f"/{sb.object_id}/volumes/" in line.split()[4]]
    assert staged, "no staged volume mount in the engine's namespace"
    for fields in staged:
        assert {"ro", "nosuid", "nodev"} <= set(fields[5].split(",")), fields
    assert run(sb, "touch /ro/x")[0] != 0
