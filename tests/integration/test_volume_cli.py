"""``hutch volume create|ls|put|get|rm`` and ``hutch cp``."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import hutch
from tests.helpers import hutch_cli


def _ok(*args: str) -> str:
    r = hutch_cli(*args)
    assert r.returncode == 0, (args, r.stderr.decode())
    return r.stdout.decode()


def test_volume_commands(engine: dict[str, Any], tmp_path: Path) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    (tmp_path / "f.txt").write_text("file\n")
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "i.txt").write_text("inner\n")
    volume_id = _ok("volume", "create", name).strip()
    assert volume_id.startswith("vo-")
    try:
        assert name in _ok("volume", "ls")
        _ok("volume", "put", name, str(tmp_path / "f.txt"), "/a/f.txt")
        _ok("volume", "put", name, str(tmp_path / "d"), "/dir")
        _ok("volume", "get", name, "/dir/sub/i.txt", str(tmp_path / "got.txt"))
        assert (tmp_path / "got.txt").read_text() == "inner\n"
        paths = {e.path for e in hutch.Volume.from_name(name).listdir("/", recursive=True)}
        assert {"/a/f.txt", "/dir/sub/i.txt"} <= paths
    finally:
        _ok("volume", "rm", name)
    assert name not in _ok("volume", "ls")
    missing = hutch_cli("volume", "rm", name)
    assert missing.returncode == 125 and b"NotFoundError" in missing.stderr


def test_cp_both_ways(engine: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_bytes(bytes(range(256)))
    sb = hutch.Sandbox.create(timeout=60)
    try:
        _ok("cp", str(tmp_path / "in.txt"), f"{sb.object_id}:/tmp/in.txt")
        assert sb.filesystem.read_bytes("/tmp/in.txt") == bytes(range(256))
        _ok("cp", f"{sb.object_id}:/etc/hostname", str(tmp_path))
        assert (tmp_path / "hostname").read_text().strip() == sb.object_id
    finally:
        sb.terminate()
    both_local = hutch_cli("cp", "a", "b")
    assert both_local.returncode != 0 and b"between the host and a sandbox" in both_local.stderr
