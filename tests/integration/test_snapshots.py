"""Filesystem snapshots and images mounted into running sandboxes, on the real engine:
a snapshot compared file by file with its source, branches that diverge, snapshots that
outlive the daemon and are found from another process, a snapshot taken while a process
writes, and snapshot_directory + mount_image + unmount_image."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import hutch
from hutch.exception import ConflictError, InvalidError
from tests.helpers import hutch_cli, kill_daemon, wait_for

#: Prints one JSON line per entry under the given roots: what a snapshot must keep.
MANIFEST = r"""
import hashlib, json, os, stat, sys
skip = {"/etc/hostname", "/etc/hosts", "/etc/resolv.conf"}
for root in sys.argv[1:]:
    for top, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(top, name)
            if path in skip:
                continue
            st = os.lstat(path)
            entry = {"path": path, "mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid}
            if stat.S_ISLNK(st.st_mode):
                entry["link"] = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                entry["size"] = st.st_size
                entry["nlink"] = st.st_nlink
                with open(path, "rb") as f:
                    entry["sha"] = hashlib.sha256(f.read()).hexdigest()
                entry["xattrs"] = {k: os.getxattr(path, k).hex() for k in os.listxattr(path)}
            print(json.dumps(entry, sort_keys=True))
"""

#: What the source sandbox changes: new files of every kind, base files deleted and
#: changed, a base directory replaced (opaque), owners, modes, links, an xattr.
CHANGES = r"""
set -e
mkdir -p /work/sub/deep /opt/tool
printf 'hello\n' > /work/plain
head -c 300000 /dev/urandom > /work/sub/random.bin
printf 'secret\n' > /work/private && chmod 600 /work/private
printf '#!/bin/sh\necho run\n' > /work/run.sh && chmod 4755 /work/run.sh
chown 1000:1001 /work/sub/deep
ln -s ../plain /work/sub/rel-link
ln -s /etc/os-release /work/abs-link
ln /work/plain /work/hardlink
mkfifo /work/fifo
truncate -s 50M /work/sparse
python3 -c "import os; os.setxattr('/work/plain', 'user.origin', b'sandbox-1')"
rm /etc/issue
printf 'changed\n' > /etc/debian_version
chmod 700 /etc/skel
rm -rf /usr/share/doc/apt
mkdir /usr/share/doc/apt && printf 'new\n' > /usr/share/doc/apt/only-this
"""
ROOTS = ["/work", "/etc", "/opt", "/usr/share/doc"]


def _manifest(sb: Any) -> list[dict[str, Any]]:
    p = sb.exec("python3", "-c", MANIFEST, *ROOTS)
    out = p.stdout.read()
    assert p.wait() == 0, p.stderr.read()
    return [json.loads(line) for line in out.splitlines()]


def _run(sb: Any, script: str) -> str:
    p = sb.exec("sh", "-c", script)
    out = p.stdout.read()
    assert p.wait() == 0, p.stderr.read()
    return str(out)


def test_a_snapshot_keeps_every_change_file_by_file(engine: dict[str, Any]) -> None:
    source = hutch.Sandbox.create(timeout=300)
    copy = None
    try:
        _run(source, CHANGES)
        image = source.snapshot_filesystem()
        assert image.object_id and image.object_id.startswith("hutch/snapshot:")
        copy = hutch.Sandbox.create(image=image, timeout=300)
        theirs, ours = _manifest(source), _manifest(copy)
        assert [e["path"] for e in ours] == [e["path"] for e in theirs]
        assert ours == theirs
        paths = {e["path"]: e for e in ours}
        assert "/etc/issue" not in paths  # a whiteout
        assert sorted(p for p in paths if p.startswith("/usr/share/doc/apt/")) == \
            ["/usr/share/doc/apt/only-this"]  # an opaque directory
        assert paths["/work/run.sh"]["mode"] & 0o7777 == 0o4755
        assert (paths["/work/sub/deep"]["uid"], paths["/work/sub/deep"]["gid"]) == (1000, 1001)
        assert paths["/work/hardlink"]["nlink"] == 2
        assert paths["/work/plain"]["xattrs"] == {"user.origin": b"sandbox-1".hex()}
        assert paths["/work/abs-link"]["link"] == "/etc/os-release"
        # the sparse file stays sparse in the copy
        assert _run(copy, "du -k /work/sparse | cut -f1").strip() == "0"
        assert _run(copy, "test -p /work/fifo && echo fifo").strip() == "fifo"
    finally:
        source.terminate()
        if copy is not None:
            copy.terminate()


def test_ten_branches_of_one_snapshot_diverge(engine: dict[str, Any]) -> None:
    source = hutch.Sandbox.create(timeout=300)
    branches: list[Any] = []
    try:
        _run(source, "echo base > /state")
        image = source.snapshot_filesystem()
        _run(source, "echo source-moved-on > /state")
        branches = [hutch.Sandbox.create(image=image, timeout=300) for _ in range(10)]
        for n, sb in enumerate(branches):
            assert _run(sb, "cat /state") == "base\n"
            _run(sb, f"echo branch-{n} > /state; echo {n} > /mine-{n}")
        for n, sb in enumerate(branches):
            assert _run(sb, "cat /state") == f"branch-{n}\n"
            assert _run(sb, "ls / | grep -c '^mine-' || true").strip() == "1"
        assert _run(source, "cat /state") == "source-moved-on\n"
    finally:
        for sb in [source, *branches]:
            sb.terminate()


def test_a_snapshot_survives_a_daemon_restart_and_is_found_from_another_process(
        engine: dict[str, Any]) -> None:
    source = hutch.Sandbox.create(timeout=300)
    try:
        _run(source, "echo kept > /kept")
        ref = source.snapshot_filesystem().object_id
    finally:
        source.terminate()
    kill_daemon()
    code = ("import sys, hutch\n"
            "sb = hutch.Sandbox.create(image=hutch.Image.from_id(sys.argv[1]), timeout=120)\n"
            "p = sb.exec('cat', '/kept'); print(p.stdout.read(), end=''); p.wait()\n"
            "sb.terminate()\n")
    done = subprocess.run([sys.executable, "-c", code, str(ref)], capture_output=True,
                          text=True, timeout=300, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    assert done.stdout == "kept\n"
    listing = hutch_cli("image", "ls")
    assert listing.returncode == 0
    assert str(ref).encode() in listing.stdout


def test_a_snapshot_while_a_process_writes_is_consistent(engine: dict[str, Any]) -> None:
    """The writer replaces a file atomically, thousands of times a second: every snapshot
    holds one whole value, and the writer goes on after each (it was let go)."""
    source = hutch.Sandbox.create(timeout=300)
    copies: list[Any] = []
    try:
        writer = source.exec("sh", "-c", "mkdir -p /w; i=0; while :; do i=$((i+1)); "
                             "echo $i > /w/f.tmp; mv /w/f.tmp /w/f; done")
        wait_for(lambda: source.exec("test", "-e", "/w/f").wait() == 0, what="the writer")
        for _ in range(3):
            before = int(_run(source, "cat /w/f"))
            image = source.snapshot_filesystem()
            wait_for(lambda: int(_run(source, "cat /w/f")) > before + 10,  # noqa: B023
                     what="the writer to go on after the snapshot")
            copy = hutch.Sandbox.create(image=image, timeout=300)
            copies.append(copy)
            value = _run(copy, "cat /w/f")
            assert value.strip().isdigit() and value.endswith("\n"), repr(value)
            assert int(value) >= before
        assert writer.poll() is None
    finally:
        for sb in [source, *copies]:
            sb.terminate()


def test_snapshot_directory_then_mount_and_unmount(engine: dict[str, Any]) -> None:
    first = hutch.Sandbox.create(timeout=300)
    second = hutch.Sandbox.create(timeout=300)
    try:
        _run(first, "mkdir -p /proj/sub && echo a > /proj/a && echo b > /proj/sub/b && "
                    "ln -s a /proj/link && chown 1000 /proj/a")
        image = first.snapshot_directory("/proj")
        _run(second, "mkdir -p /data && echo old > /data/existing")
        second.mount_image("/data", image)
        assert _run(second, "cd /data && find . | sort") == \
            ".\n./a\n./link\n./sub\n./sub/b\n"
        assert _run(second, "stat -c %u /data/a").strip() == "1000"
        _run(second, "echo new > /data/new && echo changed > /data/a")  # copy-on-write
        assert _run(second, "cat /data/a") == "changed\n"
        second.unmount_image("/data")
        assert _run(second, "ls /data") == "existing\n"
        second.mount_image("/data", image)  # the changes went with the unmount
        assert _run(second, "cat /data/a; ls /data") == "a\na\nlink\nsub\n"
        second.unmount_image("/data")
        # any image, at a path that does not exist yet
        second.mount_image("/mnt/base/image", hutch.Image.debian_slim())
        assert _run(second, "test -x /mnt/base/image/usr/bin/python3 && echo ok") == "ok\n"
        second.unmount_image("/mnt/base/image")
        with pytest.raises(InvalidError, match="no image is mounted"):
            second.unmount_image("/data")
        assert _run(first, "cat /proj/a") == "a\n"  # the source is untouched
    finally:
        first.terminate()
        second.terminate()


def test_a_finished_sandbox_cannot_be_snapshotted(engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create(timeout=60)
    sb.terminate()
    with pytest.raises(ConflictError, match="finished"):
        sb.snapshot_filesystem()
    with pytest.raises(ConflictError, match="finished"):
        sb.mount_image("/x", hutch.Image.debian_slim())


def test_the_benchmark_runs_and_reports(engine: dict[str, Any], tmp_path: Path) -> None:
    """``benchmarks/snapshots.py`` in a quick run, so that it cannot rot (figures are not
    checked, only that each was measured and reported)."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.snapshots", "--runs", "1",
                           "--mib", "4", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=600, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads((tmp_path / "snapshots.json").read_text())
    assert len(figures) == 4 and all(f["median_ms"] > 0 for f in figures.values())
    assert (tmp_path / "snapshots.md").read_text().startswith("# Filesystem snapshots")
