"""Each sandbox runs under user ids of its own (a slice of the user's subordinate range), so
root of one sandbox is not root of another, nor the engine, nor the user.

The attack assumed here is the one issue 15's red team made real through a zygote: code
that got out of a sandbox's pid and mount namespaces (a kernel bug, a helper caught
mid-``vfork``).  It is reproduced from the host's side: a process enters sandbox A's user
namespace and becomes its root, exactly the credentials such an escapee keeps, while it
sees every process of the host.  From there it tries to signal, trace and read sandbox B,
the engine and an unrelated process of the user.  With one namespace for all of them
(before), every one of those succeeded: the escapee was the user's own uid.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

import hutch
from hutch.sdk.transport import request_blocking
from tests.helpers import cmdline_of, wait_for

#: Joins the user namespace of process argv[1], becomes its root, and tries each target.
ESCAPEE = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
source, targets = int(sys.argv[1]), json.loads(sys.argv[2])
fd = os.open(f"/proc/{source}/ns/user", os.O_RDONLY)
if libc.setns(fd, 0x10000000) != 0:
    raise SystemExit(f"setns: {os.strerror(ctypes.get_errno())}")
os.setgroups([])
os.setresgid(0, 0, 0)
os.setresuid(0, 0, 0)
found = {"uid_map": open("/proc/self/uid_map").read().split(), "targets": {}}
for name, pid in targets.items():
    result = {}
    try:
        os.kill(pid, 0)
        result["kill"] = 0
    except OSError as exc:
        result["kill"] = exc.errno
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            f.read(1)
        result["environ"] = 0
    except OSError as exc:
        result["environ"] = exc.errno
    if libc.ptrace(16, pid, 0, 0) == 0:  # PTRACE_ATTACH
        result["ptrace"] = 0
        os.waitpid(pid, 0x40000000)  # __WALL: its attach stop, then let it run on
        libc.ptrace(17, pid, 0, 0)  # PTRACE_DETACH
    else:
        result["ptrace"] = ctypes.get_errno()
    found["targets"][name] = result
print(json.dumps(found))
"""


def _own_ids_enabled(engine: dict[str, Any]) -> bool:
    return engine.get("userns_mode") == "subuid" and os.environ.get("HUTCH_USERNS") != "shared"


def _host_pid(marker: str) -> int:
    """The host pid of the process whose command line carries ``marker``."""
    def find() -> int:
        for entry in os.listdir("/proc"):
            if entry.isdigit() and marker.encode() in cmdline_of(int(entry)):
                return int(entry)
        return 0
    return wait_for(find, what=f"the process {marker}")


def _sleeper(sb: Any) -> tuple[Any, int]:
    """An exec that sleeps in ``sb`` (as its root), and its host pid."""
    marker = f"{1000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**9}"
    proc = sb.exec("sleep", marker)
    return proc, _host_pid(f"sleep\0{marker}")


def _kernel_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def test_root_of_one_sandbox_is_nobody_to_another(engine: dict[str, Any]) -> None:
    if not _own_ids_enabled(engine):
        pytest.skip("sandboxes share the engine's ids here (no subordinate id range)")
    a = hutch.Sandbox.create(timeout=120)
    b = hutch.Sandbox.create(timeout=120)
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        _, in_a = _sleeper(a)
        _, in_b = _sleeper(b)
        daemon = int(request_blocking("GET", "/v1/engine")["pid"])
        uids = {_kernel_uid(in_a), _kernel_uid(in_b), os.getuid()}
        assert len(uids) == 3, f"sandbox roots share a kernel uid with each other or the " \
                               f"user: {uids}"
        result = subprocess.run(
            [sys.executable, "-c", ESCAPEE, str(in_a),
             json.dumps({"sandbox B": in_b, "engine daemon": daemon,
                         "the user's own process": bystander.pid})],
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        found = json.loads(result.stdout)
        for name, outcome in found["targets"].items():
            assert outcome["kill"] == errno.EPERM, f"A's root could signal {name}: {outcome}"
            assert outcome["ptrace"] == errno.EPERM, f"A's root could trace {name}: {outcome}"
            assert outcome["environ"] in (errno.EACCES, errno.EPERM), \
                f"A's root could read the environment of {name}: {outcome}"
        # ...while its own processes stay its own: the same escapee reaches them
        own = subprocess.run([sys.executable, "-c", ESCAPEE, str(in_a),
                              json.dumps({"A itself": in_a})],
                             capture_output=True, text=True, timeout=60)
        assert json.loads(own.stdout)["targets"]["A itself"]["kill"] == 0, own.stdout
    finally:
        bystander.kill()
        bystander.wait()
        for sb in (a, b):
            sb.terminate(grace_period=0)


def test_sandboxes_with_volumes_have_ids_of_their_own(engine: dict[str, Any]) -> None:
    """A sandbox that mounts a volume runs with the volume's ids: escaped, its root reaches
    the sandboxes that mount the same volume (which share its files anyway) and nothing
    else: not a sandbox of another volume or of none, the engine, or the user."""
    if not _own_ids_enabled(engine):
        pytest.skip("sandboxes share the engine's ids here (no subordinate id range)")
    names = [f"ids-{uuid.uuid4().hex[:10]}" for _ in range(2)]
    mine, other = (hutch.Volume.from_name(n, create_if_missing=True) for n in names)
    boxes: list[Any] = []
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        for volumes in ({"/v": mine}, {"/w": mine}, {"/v": other}, {}):
            boxes.append(hutch.Sandbox.create(volumes=volumes, timeout=120))
        pids = [_sleeper(sb)[1] for sb in boxes]
        uids = [_kernel_uid(pid) for pid in pids]
        assert uids[0] == uids[1], "two sandboxes of one volume see its files differently"
        assert len({uids[0], uids[2], uids[3], os.getuid()}) == 4, uids
        daemon = int(request_blocking("GET", "/v1/engine")["pid"])
        result = subprocess.run(
            [sys.executable, "-c", ESCAPEE, str(pids[0]),
             json.dumps({"the other volume's sandbox": pids[2],
                         "a sandbox without volumes": pids[3], "engine daemon": daemon,
                         "the user's own process": bystander.pid})],
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        for name, outcome in json.loads(result.stdout)["targets"].items():
            assert outcome["kill"] == errno.EPERM, f"A's root could signal {name}: {outcome}"
            assert outcome["ptrace"] == errno.EPERM, f"A's root could trace {name}: {outcome}"
    finally:
        bystander.kill()
        bystander.wait()
        for sb in boxes:
            sb.terminate(grace_period=0, wait=True)
        for name in names:
            hutch.Volume.delete(name)


def test_each_sandbox_has_disjoint_ids_and_files_of_its_own(engine: dict[str, Any]) -> None:
    if not _own_ids_enabled(engine):
        pytest.skip("sandboxes share the engine's ids here (no subordinate id range)")
    boxes = [hutch.Sandbox.create(timeout=120) for _ in range(3)]
    try:
        ranges = []
        for sb in boxes:
            proc = sb.exec("cat", "/proc/self/uid_map")
            assert proc.wait() == 0
            lines = [line.split() for line in proc.stdout.read().splitlines()]
            first = next(line for line in lines if line[0] == "0")
            ranges.append((int(first[1]), int(first[1]) + int(first[2])))
            # what the files API makes belongs to the sandbox's root, as the image's do
            sb.mkdir("/srv/made/here", parents=True)
            with sb.open("/srv/made/here/file", "w") as f:
                f.write("x")
            check = sb.exec("stat", "-c", "%u:%g %n", "/", "/etc/passwd", "/srv/made/here",
                            "/srv/made/here/file")
            assert check.wait() == 0
            owners = {line.split()[0] for line in check.stdout.read().splitlines()}
            assert owners == {"0:0"}, owners
        ranges.sort()
        for (_, end), (start, _) in itertools.pairwise(ranges):
            assert end <= start, f"two sandboxes' id ranges overlap: {ranges}"
    finally:
        for sb in boxes:
            sb.terminate(grace_period=0)


INOTIFY_HOG = r"""
import ctypes, json, sys, time
libc = ctypes.CDLL(None, use_errno=True)
fds = []
while len(fds) < 1000:
    fd = libc.inotify_init1(0)
    if fd < 0:
        break
    fds.append(fd)
error = ctypes.get_errno()
try:
    open("/proc/sys/user/max_inotify_instances", "w").write("100000")
    raised = True
except OSError:
    raised = False
print(json.dumps({"instances": len(fds), "errno": error, "raised": raised,
                  "userns": open("/proc/sys/user/max_user_namespaces").read().strip()}),
      flush=True)
time.sleep(60)  # holding them
"""


def _inotify_instance() -> int:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = int(libc.inotify_init1(0))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1 failed")
    return fd


def test_one_sandbox_cannot_take_all_of_the_users_inotify_instances(
        engine: dict[str, Any]) -> None:
    """The kernel charges a sandbox's inotify instances to the user too (128 by default,
    for everything the user runs): a sandbox that took them all broke the user's own
    file watchers, the engine's ``logs(follow)`` and other sandboxes' ``watch``."""
    if not _own_ids_enabled(engine):
        pytest.skip("sandboxes share the engine's ids here (no subordinate id range)")
    from hutch.engine.isolation.idslices import SANDBOX_COUNTS

    hogs = [hutch.Sandbox.create(timeout=120) for _ in range(2)]
    try:
        procs = [sb.exec("python3", "-c", INOTIFY_HOG) for sb in hogs]
        for proc in procs:
            found = json.loads(next(iter(proc.stdout)))
            assert found["instances"] == SANDBOX_COUNTS["max_inotify_instances"], found
            assert found["errno"] == errno.EMFILE and not found["raised"], found
            assert found["userns"] == "0", found
        # both still hold theirs: the user (and the engine) have instances left
        os.close(_inotify_instance())
        follow = hogs[0].exec("sh", "-c", "echo watched > /tmp/w; cat /tmp/w")
        assert follow.wait() == 0 and follow.stdout.read() == "watched\n"
    finally:
        for sb in hogs:
            sb.terminate(grace_period=0)
