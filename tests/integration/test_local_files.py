"""Local files taken from the host when a sandbox starts (``copy=False``, Modal's default).

What a user checks: the sandbox sees the directory as it is now (no rebuild after an edit),
may change its view freely, and never changes the host's files; links are the sandbox's,
not the host's; what ``ignore`` matches and what cannot be copied (a FIFO) stay out.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import hutch
from hutch.exception import InvalidError


@contextmanager
def _sandbox(image: hutch.Image) -> Iterator[hutch.Sandbox]:
    sb = hutch.Sandbox.create("sleep", "300", image=image, timeout=300)
    try:
        yield sb
    finally:
        sb.terminate()


def _sh(sb: hutch.Sandbox, script: str) -> str:
    proc = sb.exec("sh", "-c", script, timeout=60)
    out = proc.stdout.read()
    assert proc.wait() == 0, (script, out, proc.stderr.read())
    return str(out)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "node_modules" / "big").mkdir(parents=True)
    (root / "src" / "pkg" / "__init__.py").write_text("VALUE = 'first'\n")
    (root / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (root / "run.sh").chmod(0o750)
    (root / "private.txt").write_text("mine\n")
    (root / "private.txt").chmod(0o600)
    (root / "debug.log").write_text("noise\n")
    (root / "node_modules" / "big" / "x.js").write_text("x\n")
    (root / "link").symlink_to("src/pkg/__init__.py")
    (tmp_path / "outside.txt").write_text("host secret\n")
    (root / "escape").symlink_to(tmp_path / "outside.txt")
    os.mkfifo(root / "pipe")
    return root


def test_the_sandbox_sees_the_tree_and_changes_only_its_own_view(
        engine: dict[str, Any], tree: Path) -> None:
    image = hutch.Image.from_id(engine["default_image"]).add_local_dir(
        tree, "/work", ignore=["node_modules", "*.log"])
    with _sandbox(image) as sb:
        listing = _sh(sb, "cd /work && find . | sort").split()
        assert listing == [".", "./escape", "./link", "./private.txt", "./run.sh", "./src",
                           "./src/pkg", "./src/pkg/__init__.py"]
        assert _sh(sb, "stat -c '%a %u' /work/run.sh /work/private.txt /work") == \
            f"750 0\n600 0\n{oct(tree.stat().st_mode & 0o777)[2:]} 0\n"
        assert _sh(sb, "/work/run.sh; cat /work/link /work/private.txt") == \
            "ran\nVALUE = 'first'\nmine\n"
        # the host's absolute link leads nowhere in the sandbox: it is the sandbox's path
        assert sb.exec("cat", "/work/escape").wait() != 0
        _sh(sb, "echo changed > /work/private.txt && rm /work/run.sh && "
                "mkdir /work/new && echo n > /work/new/f")
        assert _sh(sb, "cat /work/private.txt; ls /work") == \
            "changed\nescape\nlink\nnew\nprivate.txt\nsrc\n"
    assert (tree / "private.txt").read_text() == "mine\n"
    assert (tree / "run.sh").exists() and not (tree / "new").exists()


def test_an_edit_on_the_host_is_seen_by_the_next_sandbox_without_a_rebuild(
        engine: dict[str, Any], tree: Path) -> None:
    base = hutch.Image.from_id(engine["default_image"])
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(tree / "src"))
        image = base.add_local_python_source("pkg")
        code = "python3 -c 'import pkg; print(pkg.VALUE)'"
        with _sandbox(image) as sb:
            assert _sh(sb, code) == "first\n"
        ref = image.object_id
        (tree / "src" / "pkg" / "__init__.py").write_text("VALUE = 'edited'\n")
        with _sandbox(image) as sb:
            assert _sh(sb, code) == "edited\n"
        assert image.object_id == ref  # nothing was built again


def test_local_files_keep_the_images_directories_and_links(engine: dict[str, Any],
                                                           tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("one file\n")
    base = hutch.Image.from_id(engine["default_image"])
    image = base.add_local_file(tmp_path / "f.txt", "/tmp/deep/f.txt")
    with _sandbox(image) as sb:
        assert _sh(sb, "stat -c %a /tmp; cat /tmp/deep/f.txt") == "1777\none file\n"
    # bookworm's /lib is a link to usr/lib: a layer there would hide the link
    with pytest.raises(InvalidError, match="symbolic link"):
        hutch.Sandbox.create(image=base.add_local_file(tmp_path / "f.txt", "/lib/x/f.txt"),
                             timeout=30)


def test_a_build_step_after_local_files_needs_copy_true(engine: dict[str, Any],
                                                        tmp_path: Path) -> None:
    base = hutch.Image.from_id(engine["default_image"])
    with pytest.raises(InvalidError, match="copy=True"):
        base.add_local_dir(tmp_path, "/d").run_commands("ls /d").build()
    image = base.add_local_dir(tmp_path, "/d", copy=True).run_commands("ls /d > /listing")
    assert image.build().object_id is not None
