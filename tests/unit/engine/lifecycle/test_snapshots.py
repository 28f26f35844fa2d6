"""hutch.engine.lifecycle.snapshots: which sandboxes can be snapshotted or take a mount
(running ones), and a snapshot needs the very image its sandbox runs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from hutch.engine.errors import Conflict, Invalid, NotFound
from hutch.engine.lifecycle.snapshots import SnapshotService
from hutch.engine.storage import snapshots
from hutch.engine.storage.store import SandboxSpec
from hutch.imagebuild.layout import ImageStore


class _Store:
    def __init__(self, rows: dict[str, Any]) -> None:
        self.rows = rows

    def sandbox(self, sandbox_id: str) -> Any:
        if sandbox_id not in self.rows:
            raise NotFound(f"sandbox {sandbox_id} not found")
        return self.rows[sandbox_id]


def _service(tmp_path: Path, rows: dict[str, Any], live: dict[str, Any]) -> SnapshotService:
    manager = SimpleNamespace(store=_Store(rows), live=live,
                              images=SimpleNamespace(store=ImageStore(tmp_path)))
    return SnapshotService(manager)  # type: ignore[arg-type]


def test_unknown_and_finished_sandboxes_are_refused(tmp_path: Path) -> None:
    service = _service(tmp_path, {"sb-done": SimpleNamespace(state="exited")}, {})
    with pytest.raises(NotFound):
        trio.run(service.snapshot_filesystem, "sb-nope", 10.0)
    with pytest.raises(Conflict, match="finished"):
        trio.run(service.snapshot_filesystem, "sb-done", 10.0)
    with pytest.raises(Conflict, match="finished"):
        trio.run(service.mount_image, "sb-done", "/data", "img")


def test_a_terminating_sandbox_is_refused(tmp_path: Path) -> None:
    live = SimpleNamespace(terminating=True, ended=False, pidfd=3)
    service = _service(tmp_path, {"sb-1": SimpleNamespace(state="running")}, {"sb-1": live})
    with pytest.raises(Conflict, match="not running"):
        trio.run(service.unmount_image, "sb-1", "/data")


def test_kernel_paths_are_refused_before_anything_is_read(tmp_path: Path) -> None:
    live = SimpleNamespace(terminating=False, ended=False, pidfd=3)
    service = _service(tmp_path, {"sb-1": SimpleNamespace(state="running")}, {"sb-1": live})
    for path in ("/proc", "/sys/kernel", "/dev/../dev/shm"):
        with pytest.raises(Invalid, match="kernel"):
            trio.run(service.snapshot_directory, "sb-1", path, 10.0)
    with pytest.raises(Invalid):
        trio.run(service.mount_image, "sb-1", "/", "img")


def test_a_snapshot_needs_the_image_the_sandbox_runs(tmp_path: Path) -> None:
    service = _service(tmp_path, {}, {})
    store = service.manager.images.store
    tree = snapshots.new_tree(store)
    (tree / "f").write_text("x")
    layer = snapshots.commit_tree(store, tree)
    store.write_image("img:1", [layer], {})
    row = SimpleNamespace(sandbox_id="sb-1", image="img:1",
                          spec=SandboxSpec(layers=[layer[1], "sha256:local-abc"]))
    assert service._base_ref(row) == "img:1"  # (its local files are not part of it)
    row.spec = SandboxSpec(layers=["sha256:" + "0" * 64])
    with pytest.raises(Conflict, match="another image"):
        service._base_ref(row)
    row.image = "img:gone"
    with pytest.raises(Conflict, match="removed"):
        service._base_ref(row)
