"""hutch.engine.storage.imagemounts: where a mount's writable layer lies (beside the
sandbox's own upper directory, so in its disk limit) and the records of its mounts."""

from __future__ import annotations

from pathlib import Path

from hutch.engine.storage import imagemounts
from hutch.engine.storage.rootfs import SandboxDirs


def test_the_writable_layer_lies_beside_the_sandbox_upper(tmp_path: Path) -> None:
    slot = tmp_path / "slot"
    (slot / "upper").mkdir(parents=True)
    dirs = SandboxDirs(tmp_path / "sb")
    dirs.root.mkdir()
    dirs.upper.symlink_to(slot / "upper")
    assert imagemounts.data_dir(dirs, 3) == slot.resolve() / "imagemount-3"


def test_records_round_trip_and_numbers_are_never_reused(tmp_path: Path) -> None:
    dirs = SandboxDirs(tmp_path)
    (tmp_path / "upper").mkdir()
    assert imagemounts.load(dirs) == {}
    records: imagemounts.Records = {"/data": {"number": 1, "mount_id": 42, "seen": "/data",
                                              "layers": ["aa", "bb"]}}
    imagemounts.save(dirs, records)
    assert imagemounts.load(dirs) == records
    (tmp_path / "imagemount-2").mkdir()  # data left by an earlier mount
    assert imagemounts.next_number(dirs, records) == 3


def test_a_damaged_record_file_reads_as_none(tmp_path: Path) -> None:
    dirs = SandboxDirs(tmp_path)
    (tmp_path / imagemounts.RECORDS).write_text("[not json")
    assert imagemounts.load(dirs) == {}


def test_the_layers_of_every_mount_are_named_for_a_restarted_daemon(tmp_path: Path) -> None:
    dirs = SandboxDirs(tmp_path)
    assert imagemounts.layer_names(dirs) == []
    imagemounts.save(dirs, {"/a": {"number": 1, "mount_id": 1, "seen": "/a",
                                   "layers": ["bb", "aa"]},
                            "/b": {"number": 2, "mount_id": 2, "seen": "/b", "layers": ["aa"]},
                            "/old": {"number": 3, "mount_id": 3, "seen": "/old"}})
    assert imagemounts.layer_names(dirs) == ["aa", "bb"]  # (a record from before: none)
