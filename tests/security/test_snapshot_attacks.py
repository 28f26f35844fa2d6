"""Red team: filesystem snapshots and image mounts driven by code inside the sandbox.

The sandbox shapes everything the engine reads for a snapshot (its upper directory, its
root as it sees it) and every path it is asked to mount at.  Each test is an attack:
links out of the sandbox, FIFOs, leases, huge sparse files, deep trees, odd names,
``/proc``, traversal; in each the engine stays healthy, answers with a typed error or a
correct snapshot, lets the sandbox go on running, and nothing of the host shows up.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

import hutch
from hutch.exception import InvalidError, NotFoundError, SnapshotCreationError
from hutch.sdk.transport import request_blocking


@pytest.fixture
def sb(engine: dict[str, Any]) -> Iterator[Any]:
    sandbox = hutch.Sandbox.create(timeout=300)
    yield sandbox
    sandbox.terminate()


def _run(sandbox: Any, script: str) -> str:
    p = sandbox.exec("sh", "-c", script)
    out = p.stdout.read()
    assert p.wait() == 0, p.stderr.read()
    return str(out)


def _still_well(sandbox: Any) -> None:
    """The engine answers and the sandbox's processes were let go."""
    assert request_blocking("GET", "/v1/health")
    assert _run(sandbox, "echo alive") == "alive\n"


def test_links_out_of_the_sandbox_stay_links(sb: Any) -> None:
    _run(sb, "mkdir /work && ln -s /etc/shadow /work/abs && ln -s ../../../../../etc/shadow "
             "/work/rel && ln -s /proc/1/root /work/magic && echo mine > /work/marker")
    image = sb.snapshot_filesystem()
    copy = hutch.Sandbox.create(image=image, timeout=120)
    try:
        assert _run(copy, "readlink /work/abs /work/rel /work/magic") == \
            "/etc/shadow\n../../../../../etc/shadow\n/proc/1/root\n"
        assert _run(copy, "cat /work/marker") == "mine\n"
    finally:
        copy.terminate()
    _still_well(sb)


def test_snapshot_directory_resolves_links_inside_the_sandbox(sb: Any) -> None:
    """A link to ``/`` is the sandbox's root; a link through ``/proc``'s magic links and a
    path that climbs out stay inside, or are refused."""
    _run(sb, "echo sandbox-etc > /etc/only-in-sandbox && ln -s / /rootlink && "
             "ln -s /proc/1/root /magic && ln -s /proc /myproc")
    image = sb.snapshot_directory("/rootlink/../../../etc")
    holder = hutch.Sandbox.create(timeout=120)
    try:
        holder.mount_image("/seen", image)
        assert _run(holder, "cat /seen/only-in-sandbox") == "sandbox-etc\n"
        assert not os.path.exists("/etc/only-in-sandbox")
    finally:
        holder.terminate()
    with pytest.raises(InvalidError):
        sb.snapshot_directory("/magic/etc")  # a magic link is never followed
    with pytest.raises(InvalidError, match="kernel"):
        sb.snapshot_directory("/myproc/1")  # /proc under another name
    with pytest.raises(InvalidError, match="kernel"):
        sb.snapshot_directory("/proc/self")
    with pytest.raises(NotFoundError):
        sb.snapshot_directory("/no/such/dir")
    _still_well(sb)


def test_fifos_leases_and_odd_names_neither_hang_nor_break_it(sb: Any) -> None:
    script = ("import fcntl, os\n"
              "os.mkfifo('/fifo')\n"
              "open('/odd\\nname\\udcff', 'w').write('odd')\n"
              "fd = os.open('/leased', os.O_RDWR | os.O_CREAT)\n"
              "fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)\n"
              "print('ready', flush=True)\n"
              "import time; time.sleep(600)\n")
    holder = sb.exec("python3", "-c", script, bufsize=1)  # (by line: print writes twice)
    assert next(iter(holder.stdout)) == "ready\n"
    begin = time.monotonic()
    image = sb.snapshot_filesystem(timeout=60)
    assert time.monotonic() - begin < 30
    copy = hutch.Sandbox.create(image=image, timeout=120)
    try:
        assert _run(copy, "test -p /fifo && echo fifo") == "fifo\n"
        assert _run(copy, "cat /odd*name*") == "odd"
    finally:
        copy.terminate()
    assert holder.poll() is None  # the lease holder was let go and still runs
    _still_well(sb)


def test_a_huge_sparse_file_is_refused_not_written(sb: Any) -> None:
    _run(sb, "truncate -s 1T /huge")
    begin = time.monotonic()
    with pytest.raises(SnapshotCreationError, match="bytes"):
        sb.snapshot_filesystem()
    assert time.monotonic() - begin < 30
    _still_well(sb)
    _run(sb, "rm /huge")
    sb.snapshot_filesystem()  # and it works again


def test_a_tree_too_deep_is_refused(sb: Any) -> None:
    _run(sb, "cd / && mkdir deep && cd deep && i=0; "
             "while [ $i -lt 1100 ]; do mkdir d && cd d; i=$((i+1)); done")
    with pytest.raises(SnapshotCreationError, match="deep"):
        sb.snapshot_filesystem()
    _still_well(sb)


def test_a_sandbox_that_forks_and_exits_during_the_snapshot(sb: Any) -> None:
    churn = sb.exec("sh", "-c", "while :; do (true; true) & sleep 0.001; done")
    for _ in range(3):
        try:
            sb.snapshot_filesystem(timeout=30)
        except SnapshotCreationError:
            pass  # (typed, never a hang or an engine error)
    assert churn.poll() is None
    _still_well(sb)


def test_mounts_never_go_where_the_kernel_is(sb: Any) -> None:
    image = hutch.Image.debian_slim()
    _run(sb, "ln -s /proc /p && ln -s /sys/fs /s && ln -s / /r")
    for path in ("/proc", "/proc/sys", "/sys", "/dev", "/dev/shm", "/", "/p", "/p/self",
                 "/s", "/r", "/r/proc", "relative", "/x/../../proc"):
        with pytest.raises(InvalidError):
            sb.mount_image(path, image)
    assert _run(sb, "grep -c ' /proc ' /proc/self/mounts").strip() == "1"
    # traversal stays inside: this is /tmp/inside of the sandbox, not of the host
    sb.mount_image("/mnt/../../../tmp/inside", image)
    assert not os.path.exists("/tmp/inside")
    assert _run(sb, "test -x /tmp/inside/usr/bin/python3 && echo ok") == "ok\n"
    with pytest.raises(InvalidError, match="already"):
        sb.mount_image("/tmp/inside", image)
    sb.unmount_image("/mnt/../../../tmp/inside")
    with pytest.raises(InvalidError, match="no image"):
        sb.unmount_image("/proc")
    _still_well(sb)


def test_volumes_are_not_in_the_snapshot(engine: dict[str, Any]) -> None:
    name = f"snap-vol-{os.getpid()}-{time.monotonic_ns()}"
    vol = hutch.Volume.from_name(name, create_if_missing=True)
    sandbox = hutch.Sandbox.create(volumes={"/data": vol}, timeout=120)
    try:
        _run(sandbox, "echo in-volume > /data/v && echo in-root > /r")
        image = sandbox.snapshot_filesystem()
    finally:
        sandbox.terminate()
    copy = hutch.Sandbox.create(image=image, timeout=120)
    try:
        assert _run(copy, "cat /r; ls -A /data 2>/dev/null | wc -l") == "in-root\n0\n"
    finally:
        copy.terminate()
        hutch.Volume.objects.delete(name)
