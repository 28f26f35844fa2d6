"""hutch.engine.storage.rootfs.make_dirs_inside: a workdir (from the API or an image's config) is
made inside the sandbox's root, however it is spelled and whatever the image links."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hutch.engine.errors import Invalid
from hutch.engine.storage.rootfs import make_dirs_inside


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").mkdir()
    return tmp_path / "root"


def test_dotdot_stops_at_the_root(root: Path) -> None:
    make_dirs_inside(root, "/../../../../work/../srv/app")
    assert (root / "srv" / "app").is_dir()
    assert list((root.parent / "outside").iterdir()) == []
    assert sorted(os.listdir(root.parent)) == ["outside", "root"]


def test_symlinks_of_the_image_lead_inside_it(root: Path) -> None:
    outside = root.parent / "outside"
    os.symlink(str(outside), root / "abs")
    os.symlink("../../../..", root / "up")
    make_dirs_inside(root, "/abs/w")
    make_dirs_inside(root, "/up/up/w2")
    assert (root / str(outside).lstrip("/") / "w").is_dir()
    assert (root / "w2").is_dir() and not Path("/w2").exists()
    assert list(outside.iterdir()) == []


def test_a_file_on_the_way_is_invalid(root: Path) -> None:
    (root / "file").write_text("x")
    with pytest.raises(Invalid, match="workdir"):
        make_dirs_inside(root, "/file/w")
    os.symlink("loop", root / "loop")
    with pytest.raises(Invalid, match="workdir"):
        make_dirs_inside(root, "/loop/w")
