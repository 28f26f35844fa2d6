"""The engine run by real root: same API and isolation, no user namespace of its own
(each sandbox still gets one, on a slice of root's subordinate range)."""

from __future__ import annotations

import os
from typing import Any

import pytest

import hutch
from hutch.exception import SandboxTimeoutError


def test_engine_runs_without_a_user_namespace(root_engine: dict[str, Any]) -> None:
    assert root_engine["userns_mode"] == "root"
    pid = root_engine["pid"]
    assert os.readlink(f"/proc/{pid}/ns/user") == os.readlink("/proc/self/ns/user")
    assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")


def test_create_exec_terminate_as_root(root_engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create(env={"X": "1"}, workdir="/work", timeout=60)
    p = sb.exec("python3", "-c", "import os; print(os.environ['X'], os.getcwd(), os.getuid())")
    assert p.stdout.read() == "1 /work 0\n"
    assert p.wait() == 0
    status = sb.exec("grep", "-E", "^(NoNewPrivs|CapEff)", "/proc/self/status").stdout.read()
    assert "NoNewPrivs:\t1" in status
    assert "CapEff:\t00000000800405fb" in status
    assert sb.exec("hostname").stdout.read().strip() == sb.object_id
    assert sb.exec("mount", "-t", "tmpfs", "t", "/mnt").wait() != 0
    assert sb.exec("sh", "-c", "rm -rf /usr/share/doc && mkdir /usr/share/doc").wait() == 0
    sb.terminate()
    assert sb.returncode == 137


def test_entrypoint_and_timeout_as_root(root_engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create("sh", "-c", "echo hi; exit 9", timeout=60)
    sb.wait()
    assert (sb.returncode, sb.stdout.read()) == (9, "hi\n")
    slow = hutch.Sandbox.create("sleep", "100", timeout=1)
    with pytest.raises(SandboxTimeoutError):
        slow.wait()
    assert slow.returncode == 124


def test_root_sandboxes_run_under_slices_of_roots_range(root_engine: dict[str, Any]) -> None:
    """Root of a sandbox of a root engine is not the host's root: it is an id of root's
    subordinate range (tools/setup-host.sh gives root one), a different one per sandbox."""
    from hutch.engine.kernel.userns import subid_range

    rng = subid_range("/etc/subuid", 0)
    if rng is None:
        pytest.skip("root has no subordinate range here: sandboxes share the host's ids")
    boxes = [hutch.Sandbox.create(timeout=60) for _ in range(2)]
    try:
        bases = []
        for sb in boxes:
            p = sb.exec("sh", "-c", "cat /proc/self/uid_map; id -u; echo x > /root/f; "
                                    "stat -c %u /root/f")
            lines = p.stdout.read().splitlines()
            assert p.wait() == 0, lines
            first = lines[0].split()
            assert first[0] == "0" and rng.start <= int(first[1]) < rng.start + rng.count
            assert lines[-2:] == ["0", "0"]  # root inside, and its files are root's
            bases.append(int(first[1]))
        assert bases[0] != bases[1]
    finally:
        for sb in boxes:
            sb.terminate()


def test_root_sandboxes_with_a_volume_run_under_its_slice(root_engine: dict[str, Any]) -> None:
    """A volume of a root engine has a slice of root's range too: its sandboxes' root is
    no host root, and sees the volume's files (written by the files API, before) as its."""
    import uuid

    from hutch.engine.kernel.userns import subid_range

    rng = subid_range("/etc/subuid", 0)
    if rng is None:
        pytest.skip("root has no subordinate range here: sandboxes share the host's ids")
    name = f"root-vol-{uuid.uuid4().hex[:8]}"
    vol = hutch.Volume.from_name(name, create_if_missing=True)
    try:
        with vol.batch_upload() as batch:
            batch.put_file(__file__, "/given.py")
        sb = hutch.Sandbox.create(volumes={"/v": vol}, timeout=60)
        p = sb.exec("sh", "-c", "cat /proc/self/uid_map; stat -c %u:%g /v /v/given.py; "
                                "echo x > /v/made && stat -c %u /v/made")
        lines = p.stdout.read().splitlines()
        assert p.wait() == 0, lines
        first = lines[0].split()
        assert first[0] == "0" and rng.start <= int(first[1]) < rng.start + rng.count, lines
        assert lines[-3:] == ["0:0", "0:0", "0"], lines
        sb.terminate()
    finally:
        for sb in hutch.Sandbox.list():
            sb.terminate(wait=True)
        hutch.Volume.delete(name)
