"""copy=False local files as layer directories: keys, what is copied, what is shared
with an earlier copy, and what the image decides (prefix modes, links on the way)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hutch.api.models import LocalMount
from hutch.engine.errors import Invalid
from hutch.engine.storage import locallayers


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "pkg" / "deep").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("a")
    (root / "pkg" / "deep" / "b.txt").write_text("b")
    (root / "skip.log").write_text("log")
    (root / "link").symlink_to("/etc/passwd")
    os.mkfifo(root / "fifo")
    return root


def _dirs(tmp_path: Path) -> tuple[Path, Path]:
    layers, tmp = tmp_path / "layers", tmp_path / "tmp"
    layers.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    return layers, tmp


def test_a_tree_becomes_a_layer_at_its_destination(tmp_path: Path, tree: Path) -> None:
    layers, tmp = _dirs(tmp_path)
    mount = LocalMount(source=str(tree), dest="/srv/app", exclude=["skip.log"])
    made = locallayers.layer(layers, tmp, mount, [])
    assert made.parent == layers and made.name.startswith("local-") and len(made.name) == 38
    app = made / "srv" / "app"
    found = sorted(str(p.relative_to(app)) for p in app.rglob("*"))
    assert found == ["link", "pkg", "pkg/a.py", "pkg/deep", "pkg/deep/b.txt"]  # no fifo, log
    assert os.readlink(app / "link") == "/etc/passwd"  # a link stays a link
    assert stat.S_IMODE((made / "srv").stat().st_mode) == 0o755
    assert list(tmp.iterdir()) == []
    assert locallayers.layer(layers, tmp, mount, []) == made  # unchanged: the same copy


def test_an_edit_makes_a_new_copy_sharing_what_did_not_change(tmp_path: Path,
                                                               tree: Path) -> None:
    layers, tmp = _dirs(tmp_path)
    mount = LocalMount(source=str(tree), dest="/app")
    first = locallayers.layer(layers, tmp, mount, [])
    (tree / "pkg" / "a.py").write_text("edited, longer")
    second = locallayers.layer(layers, tmp, mount, [])
    assert second != first and second.name[:18] == first.name[:18]  # same identity
    assert (second / "app/pkg/a.py").read_text() == "edited, longer"
    assert (first / "app/pkg/a.py").read_text() == "a"  # the earlier copy is untouched
    same = second / "app/pkg/deep/b.txt"
    assert same.stat().st_ino == (first / "app/pkg/deep/b.txt").stat().st_ino
    assert (second / "app/pkg/a.py").stat().st_ino != (first / "app/pkg/a.py").stat().st_ino


def test_the_key_follows_the_tree_and_the_image(tmp_path: Path, tree: Path) -> None:
    mount = LocalMount(source=str(tree), dest="/app")
    key = locallayers.fingerprint(mount, [])
    assert key == locallayers.fingerprint(mount, [])
    assert key != locallayers.fingerprint(mount, [tmp_path / "some-layer"])
    assert key != locallayers.fingerprint(LocalMount(source=str(tree), dest="/other"), [])
    os.utime(tree / "pkg" / "a.py", ns=(1, 1))
    assert key != locallayers.fingerprint(mount, [])


def test_prefix_directories_take_the_images_modes(tmp_path: Path, tree: Path) -> None:
    layers, tmp = _dirs(tmp_path)
    image = tmp_path / "image-layer"
    (image / "tmp").mkdir(parents=True)
    (image / "tmp").chmod(0o1777)
    (image / "lib").symlink_to("usr/lib")
    made = locallayers.layer(layers, tmp, LocalMount(source=str(tree), dest="/tmp/x/app"),
                             [image])
    assert stat.S_IMODE((made / "tmp").stat().st_mode) == 0o1777
    assert stat.S_IMODE((made / "tmp" / "x").stat().st_mode) == 0o755
    with pytest.raises(Invalid, match="symbolic link"):
        locallayers.layer(layers, tmp, LocalMount(source=str(tree), dest="/lib/app"), [image])


def test_a_layers_link_is_never_followed_to_the_host(tmp_path: Path, tree: Path) -> None:
    """A lower layer's ``/a -> <host dir>`` under an upper layer's ``/a`` directory: the
    mode of ``/a/secret`` must not come from the host's directory."""
    layers, tmp = _dirs(tmp_path)
    host = tmp_path / "host" / "secret"
    host.mkdir(parents=True)
    host.chmod(0o710)
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir()
    (lower / "a").symlink_to(tmp_path / "host")
    (upper / "a").mkdir(parents=True)
    made = locallayers.layer(layers, tmp,
                             LocalMount(source=str(tree), dest="/a/secret/app"), [lower, upper])
    assert stat.S_IMODE((made / "a" / "secret").stat().st_mode) == 0o755


def test_files_and_limits(tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layers, tmp = _dirs(tmp_path)
    one = locallayers.layer(layers, tmp, LocalMount(source=str(tree / "pkg" / "a.py"),
                                                    dest="/etc/a.py", file=True), [])
    assert (one / "etc" / "a.py").read_text() == "a"
    with pytest.raises(Invalid, match="not a directory"):
        locallayers.layer(layers, tmp, LocalMount(source=str(tree / "pkg" / "a.py"),
                                                  dest="/x"), [])
    with pytest.raises(Invalid, match="No such file"):
        locallayers.layer(layers, tmp, LocalMount(source=str(tmp_path / "none"), dest="/x"),
                          [])
    monkeypatch.setattr(locallayers, "MAX_ENTRIES", 3)
    with pytest.raises(Invalid, match="more than 3 entries"):
        locallayers.layer(layers, tmp, LocalMount(source=str(tree), dest="/big"), [])
