"""A sandbox cannot fill the host's disk through the entrypoint's logs.

The entrypoint's stdout and stderr are files the engine opens and hands to it; inside the
sandbox they are ``/proc/1/fd/1`` and ``/proc/1/fd/2``, writable by the sandbox's root.
They used to be plain files in the sandbox's directory on the host's disk: with
``ephemeral_disk=64`` a red team wrote 3 GiB there with ``fallocate`` (outside the limit it
had set), and the files stayed after terminate.  Now they live on a tmpfs of
``LOG_CAP_MIB`` (or inside the sandbox's ``ephemeral_disk`` tmpfs, counted in it), so a
write past it fails with ENOSPC, and at most that much is kept on the host once the sandbox
ended, for ``LOG_RETENTION`` seconds.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path

import pytest

import hutch
from hutch.engine.storage import rootfs
from hutch.engine.storage.store import SandboxSpec, Store
from tests.helpers import hutch_cli, wait_for

MIB = 1024 * 1024
#: what else may land on the data dir's disk while a test runs (other tests, the engine)
SLACK = 48 * MIB

FALLOCATE = """
import os
fd = os.open('/proc/1/fd/{fd}', os.O_WRONLY)
try:
    os.posix_fallocate(fd, 0, 1 << 30)
    print('allocated')
except OSError as exc:
    print('refused', exc.errno)
"""

WRITE = """
import os
fd = os.open('/proc/1/fd/{fd}', os.O_WRONLY | os.O_APPEND)
chunk = b'x' * (1 << 20)
done = 0
try:
    while done < (1 << 30):
        done += os.write(fd, chunk)
except OSError as exc:
    print('refused', exc.errno)
print(done)
"""


def _data_dir() -> Path:
    return Path(os.environ["HUTCH_DATA_DIR"])


def _used() -> int:
    st = os.statvfs(_data_dir())
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _du(path: Path) -> int:
    """Bytes allocated under ``path`` on the host (what the test can see of it)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


def _attack(sb: hutch.Sandbox, script: str) -> str:
    p = sb.exec("python3", "-c", script, timeout=120)
    out = p.stdout.read()
    assert p.wait() == 0, p.stderr.read()
    return out


def _check_host_held(sb: hutch.Sandbox, before: int, cap: int) -> None:
    sb_dir = _data_dir() / "sandboxes" / sb.object_id
    assert _du(sb_dir) <= cap + MIB, f"{_du(sb_dir) / MIB:.0f} MiB in {sb_dir}"
    grown = _used() - before
    assert grown <= cap + SLACK, f"the host's disk grew by {grown / MIB:.0f} MiB"


def test_logs_of_a_disk_limited_sandbox_are_within_its_limit(engine: object) -> None:
    before = _used()
    sb = hutch.Sandbox.create(ephemeral_disk=64, timeout=300)
    try:
        for fd in (1, 2):
            assert _attack(sb, FALLOCATE.format(fd=fd)).split()[0] == "refused"
            out = _attack(sb, WRITE.format(fd=fd)).split()
            assert out[0] == "refused" and int(out[-1]) <= 64 * MIB, out
            _check_host_held(sb, before, 64 * MIB)
        # the limit is the sandbox's: its logs took its space, so its files get none
        p = sb.exec("sh", "-c", "head -c 8M /dev/zero > /big", timeout=60)
        assert p.wait() != 0
    finally:
        sb.terminate(wait=True)
    _check_host_held(sb, before, rootfs.LOG_CAP_MIB * MIB)


def test_logs_of_a_default_sandbox_are_capped(engine: object) -> None:
    before = _used()
    sb = hutch.Sandbox.create(timeout=300)
    try:
        assert _attack(sb, FALLOCATE.format(fd=1)).split()[0] == "refused"
        out = _attack(sb, WRITE.format(fd=2)).split()
        assert out[0] == "refused" and int(out[-1]) <= rootfs.LOG_CAP_MIB * MIB, out
        _check_host_held(sb, before, rootfs.LOG_CAP_MIB * MIB)
    finally:
        sb.terminate(wait=True)
    _check_host_held(sb, before, rootfs.LOG_CAP_MIB * MIB)


def test_output_is_readable_after_a_normal_exit(engine: object) -> None:
    sb = hutch.Sandbox.create("sh", "-c", "echo hello; echo oops >&2", timeout=60)
    assert sb.wait() is None or sb.returncode == 0
    assert sb.returncode == 0
    assert sb.stdout.read() == "hello\n"
    assert sb.stderr.read() == "oops\n"
    # kept on the host (bounded by the cap) until the retention time has passed
    kept = _data_dir() / "sandboxes" / sb.object_id / "logs"
    assert (kept / "stdout.log").read_bytes() == b"hello\n"


def test_logs_kept_past_their_cap_are_cut_to_it(engine: object) -> None:
    """A disk-limited sandbox's logs share its tmpfs, so they may be larger than the cap
    while it runs; what is kept on the host afterwards is not."""
    sb = hutch.Sandbox.create(
        "sh", "-c", f"head -c {rootfs.LOG_CAP_MIB + 8}M /dev/zero; echo done >&2",
        ephemeral_disk=rootfs.LOG_CAP_MIB * 2, timeout=120)
    sb.wait()
    assert sb.returncode == 0
    kept = _data_dir() / "sandboxes" / sb.object_id / "logs"
    sizes = [(kept / n).stat().st_size for n in ("stdout.log", "stderr.log")]
    assert sum(sizes) <= rootfs.LOG_CAP_MIB * MIB, sizes


def test_directories_of_long_ended_sandboxes_are_removed(tmp_path: Path) -> None:
    """The retention sweep (run at engine start and then periodically) removes what is
    left of sandboxes that ended more than ``LOG_RETENTION`` ago, and nothing else."""
    store = Store(tmp_path / "state.db")
    app = store.app_by_name("app", create=True)[0]
    sandboxes = tmp_path / "sandboxes"
    ids = []
    for n in range(3):
        sid = f"sb-{n}"
        store.insert_sandbox(sandbox_id=sid, app_id=app, name=None, image="image",
                             spec=SandboxSpec(), timeout=60, runtime="runc", tags={})
        (sandboxes / sid / "logs").mkdir(parents=True)
        (sandboxes / sid / "logs" / "stdout.log").write_text("x")
        ids.append(sid)
    store.mark_exited(ids[0], 0, "exited")
    store.mark_exited(ids[1], 0, "exited")
    (sandboxes / "sb-unknown").mkdir()  # no record: an interrupted create's remains
    now = time.time()
    removed = rootfs.sweep_ended(sandboxes, store, now=now + 10, retention=60)
    assert removed == []
    removed = rootfs.sweep_ended(sandboxes, store, now=now + 61, retention=60)
    assert sorted(removed) == ["sb-0", "sb-1", "sb-unknown"]
    assert sorted(p.name for p in sandboxes.iterdir()) == ["sb-2"]  # still running


def test_doctor_says_whether_the_disk_is_limited(engine: object) -> None:
    """Without disk slots no default disk limit can be enforced rootless (docs/limits.md):
    the user is told so, rather than left to assume one; with them, how many and how
    large."""
    from hutch.engine.storage.diskslots import DiskSlots

    out = hutch_cli("doctor").stdout.decode()
    slots = DiskSlots.for_engine(_data_dir())
    if slots.enabled:
        assert f"[ok  ] limit: disk: {len(slots.slots)} disk slots of " in out, out
    else:
        assert "[WARN] limit: disk: no disk slots under" in out, out


FILL_ROOT = """
import errno, os, sys
size = int(sys.argv[1])
fd = os.open('/root/fill', os.O_WRONLY | os.O_CREAT, 0o600)
try:
    os.posix_fallocate(fd, 0, size)
    print('allocated')
except OSError as exc:
    print('refused', exc.errno)
st = os.statvfs('/')
print(st.f_blocks * st.f_frsize // (1 << 20))
"""


def test_a_default_sandbox_cannot_fill_the_hosts_disk(engine: dict[str, object]) -> None:
    """Red team: 2 GiB into a default sandbox's writable layer in seconds, and more with
    ``fallocate``, all of it on the host's disk.  Its writes now go to a disk slot of a
    fixed size (hutch/engine/storage/diskslots.py): past it, ENOSPC; the host's disk holds only
    what the slot holds, and the slot is emptied when the sandbox ends."""
    from hutch.engine.storage.diskslots import DiskSlots

    slots = DiskSlots.for_engine(_data_dir())
    if not slots.enabled:
        pytest.skip("no disk slots on this host (tools/setup-host.sh makes them)")
    limit_mib = slots.size_mib(slots.slots[0])
    before = _free_of_host()
    sb = hutch.Sandbox.create(timeout=300)
    try:
        _overfill(sb, FILL_ROOT, limit_mib, before)
        used = [s for s in slots.slots if (s / "upper" / "root").exists()]
        assert len(used) == 1, "the sandbox's files are not in one disk slot"
        slot = used[0]
    finally:
        sb.terminate(grace_period=0)
    assert not (slot / "upper").exists(), "an ended sandbox's slot was not emptied"
    # and gets it back when the slot is emptied (the slot is mounted with discard)
    wait_for(lambda: _free_of_host() >= before - 4 * SLACK, timeout=60,
             what="the host's disk to get the slot's blocks back")


def _free_of_host() -> int:
    return shutil.disk_usage(_data_dir()).free


def _overfill(sb: hutch.Sandbox, script: str, limit_mib: int, free_before: int) -> None:
    """Allocate 1 GiB past a slot of ``limit_mib``: refused with ENOSPC, the file system
    the sandbox sees is no larger, and the host's disk gave at most the slot's size."""
    p = sb.exec("python3", "-c", script, str((limit_mib + 1024) * MIB), timeout=120)
    out = p.stdout.read().split()
    assert p.wait() == 0, p.stderr.read()
    assert out[:2] == ["refused", str(errno.ENOSPC)], out
    assert int(out[2]) <= limit_mib, f"the sandbox's file system is {out[2]} MiB"
    assert free_before - _free_of_host() <= limit_mib * MIB + 4 * SLACK


FILL_VOLUME = FILL_ROOT.replace("/root/fill", "/data/fill").replace("statvfs('/')",
                                                                      "statvfs('/data')")


def test_a_volume_cannot_fill_the_hosts_disk(engine: dict[str, object]) -> None:
    """Volumes had no quota: a sandbox could fill the host's disk through one.  A new
    volume now lives in a volume slot of its own (hutch/engine/storage/diskslots.py): past its
    size, ENOSPC; deleting the volume empties the slot and frees it."""
    from hutch.engine.storage.diskslots import DiskSlots

    slots = DiskSlots.for_volumes(_data_dir())
    if not slots.enabled:
        pytest.skip("no volume slots on this host (tools/setup-host.sh makes them)")
    limit_mib = slots.size_mib(slots.slots[0])
    name = f"fill-{time.time_ns()}"
    volume = hutch.Volume.from_name(name, create_if_missing=True)
    before = _free_of_host()
    sb = hutch.Sandbox.create(volumes={"/data": volume}, timeout=300)
    try:
        _overfill(sb, FILL_VOLUME, limit_mib, before)
    finally:
        sb.terminate(grace_period=0)
        sb.wait(raise_on_termination=False)
    link = _data_dir() / "volumes" / volume.object_id
    slot = Path(os.readlink(link)).parent
    hutch.Volume.delete(name)
    assert not link.exists() and not (slot / "data").exists() and not (slot / "claim").exists()
    wait_for(lambda: _free_of_host() >= before - 4 * SLACK, timeout=60,
             what="the host's disk to get the volume slot's blocks back")


DEEP = "cd {where}; i=0; while [ $i -lt 1500 ]; do mkdir a && cd a; i=$((i+1)); done; echo deep"


def test_a_deep_tree_cannot_take_the_engine_down(engine: dict[str, object]) -> None:
    """Red team: 1500 nested directories in a sandbox's files, then terminate: the engine's
    removal recursed once per level (Python 3.11's rmtree), raised RecursionError, ended
    the daemon, and ended it again at every start while the tree was left in a disk slot
    (the same through a volume, at Volume.delete).  Now the tree goes, and the engine
    serves on."""
    from hutch.sdk.transport import request_blocking

    sb = hutch.Sandbox.create(timeout=300)
    p = sb.exec("sh", "-c", DEEP.format(where="/root"), timeout=120)
    assert (p.stdout.read(), p.wait()) == ("deep\n", 0)
    daemon = request_blocking("GET", "/v1/engine")["pid"]  # (earlier tests restart it)
    sb.terminate(grace_period=0)
    after = hutch.Sandbox.create(timeout=60)
    try:
        q = after.exec("echo", "served")
        assert (q.stdout.read(), q.wait()) == ("served\n", 0)
    finally:
        after.terminate(grace_period=0)
    assert request_blocking("GET", "/v1/engine")["pid"] == daemon, "the daemon died"
    name = f"deep-{time.time_ns()}"
    volume = hutch.Volume.from_name(name, create_if_missing=True)
    sb = hutch.Sandbox.create(volumes={"/data": volume}, timeout=300)
    p = sb.exec("sh", "-c", DEEP.format(where="/data"), timeout=120)
    assert (p.stdout.read(), p.wait()) == ("deep\n", 0)
    sb.terminate(grace_period=0)
    sb.wait(raise_on_termination=False)
    hutch.Volume.delete(name)
    assert request_blocking("GET", "/v1/engine")["pid"] == daemon, "the daemon died"
