"""In-memory layer copies: what they keep of a layer, the ids they count, holding and
freeing them.  (Mounting them idmapped needs the engine's namespace: the security and
integration suites do that.)"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hutch.engine.storage import layermirror
from hutch.engine.storage.layermirror import LayerMirror


def _layer(root: Path) -> Path:
    layer = root / "abc123"
    (layer / "etc").mkdir(parents=True)
    (layer / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n"
                                          "app:x:4242:4243::/app:/bin/sh\n"
                                          "nobody:x:65534:65534::/:/bin/false\n")
    (layer / "etc" / "group").write_text("staff:x:5000:\n")
    (layer / "bin").mkdir()
    (layer / "bin" / "tool").write_text("#!/bin/sh\n")
    (layer / "bin" / "tool").chmod(0o755)
    os.link(layer / "bin" / "tool", layer / "bin" / "same")
    (layer / "lib").symlink_to("bin")
    os.setxattr(layer / "etc", "user.overlay.opaque", b"y")
    return layer


def test_max_id_counts_files_and_account_files_but_not_nobody(tmp_path: Path) -> None:
    layer = _layer(tmp_path)
    assert layermirror.max_id_of(layer) == 5000
    (layer / "etc" / "group").write_text("nogroup:x:65534:\n")
    assert layermirror.max_id_of(layer) == 4243


def test_a_copy_keeps_modes_links_and_overlay_xattrs(tmp_path: Path) -> None:
    layer = _layer(tmp_path / "disk")
    mirror = LayerMirror(tmp_path / "mem")
    mirror.root.mkdir()
    (copy,), highest = mirror.acquire("sb-1", [layer])
    assert highest == 5000 and copy == mirror.root / layer.name
    assert stat.S_IMODE((copy / "bin" / "tool").stat().st_mode) == 0o755
    assert (copy / "bin" / "tool").stat().st_ino == (copy / "bin" / "same").stat().st_ino
    assert os.readlink(copy / "lib") == "bin"
    assert os.getxattr(copy / "etc", "user.overlay.opaque") == b"y"
    # a second sandbox of the image shares the copy; a new mirror adopts it as it is
    assert mirror.acquire("sb-2", [layer])[0] == [copy]
    (mirror.root / "cut-short.tmp").mkdir()
    again = LayerMirror(mirror.root)
    again.adopt()
    assert again.acquire("sb-3", [tmp_path / "gone" / layer.name]) == ([copy], 5000)
    assert not (mirror.root / "cut-short.tmp").exists()


def test_a_copy_is_freed_only_when_unused_for_the_idle_time(tmp_path: Path) -> None:
    layer = _layer(tmp_path / "disk")
    mirror = LayerMirror(tmp_path / "mem")
    mirror.root.mkdir()
    (copy,), _ = mirror.acquire("sb-1", [layer])
    mirror.acquire("sb-2", [layer])
    mirror.release("sb-1")
    assert mirror.sweep(now=10**9, idle=0) == [] and copy.exists()
    mirror.release("sb-2")
    assert mirror.sweep(idle=3600) == [] and copy.exists()
    assert mirror.sweep(idle=0) == [layer.name]
    assert not copy.exists() and list(mirror.root.iterdir()) == []
    # and made again on the next use
    assert mirror.acquire("sb-3", [layer])[0] == [copy] and copy.exists()
