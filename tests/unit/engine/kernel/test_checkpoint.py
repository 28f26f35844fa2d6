"""hutch.engine.kernel.checkpoint: the engine's verdict on CRIU checkpoints (Modal's memory
snapshots).  The kernel probe runs for real, here and in a new user namespace like a rootless
engine's, and is held to what the kernel allows that process; the host's programs (criu,
crun), which this host may lack, are stand-ins where a test needs a particular one."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from hutch.engine.kernel import checkpoint
from hutch.engine.kernel.checkpoint import CheckpointProbe

CAP_SYS_ADMIN = 21
ROOT = Path(__file__).resolve().parents[4]


def _status(field: str) -> str:
    lines = Path("/proc/self/status").read_text().splitlines()
    return next(line.split()[1] for line in lines if line.startswith(field + ":"))


def _yama_scope() -> int:
    try:
        return int(Path("/proc/sys/kernel/yama/ptrace_scope").read_text())
    except OSError:
        return 0


def _expected_errno() -> int:
    """What ``check_ptrace_options`` (kernel/ptrace.c) answers this process: 0 only with
    CAP_SYS_ADMIN in the initial user namespace and no seccomp filter of its own (and a Yama
    that allows attaching at all)."""
    allowed = (checkpoint.in_initial_userns() and os.geteuid() == 0
               and int(_status("CapEff"), 16) >> CAP_SYS_ADMIN & 1
               and _status("Seccomp") == "0" and _yama_scope() < 3)
    return 0 if allowed else errno.EPERM


def _children() -> set[str]:
    tasks = Path("/proc/self/task")
    return {pid for task in tasks.iterdir() for pid in (task / "children").read_text().split()}


def test_the_probe_answers_what_the_kernel_allows_this_process() -> None:
    before = _children()
    assert checkpoint.suspend_seccomp_errno() == _expected_errno()
    assert _children() == before  # the traced child was killed and reaped


def test_the_uid_map_says_whether_the_namespace_is_the_hosts() -> None:
    identity = Path("/proc/self/uid_map").read_text().split() == ["0", "0", "4294967295"]
    assert checkpoint.in_initial_userns() is identity


#: Run in a child that has just made a user namespace of its own (all capabilities there,
#: none outside: a rootless engine's position), root or not.
_IN_A_NEW_USERNS = """
import json
from hutch.engine.kernel import checkpoint, linux
linux.unshare(linux.CLONE_NEWUSER)
print(json.dumps([checkpoint.in_initial_userns(), checkpoint.suspend_seccomp_errno(),
                  checkpoint.CheckpointProbe("crun", "crun").reason()]))
"""


def test_from_a_user_namespace_of_its_own_the_kernel_says_eperm() -> None:
    """What a rootless engine is told, measured in a new user namespace even when the tests
    run as root: the capabilities there do not count for PTRACE_O_SUSPEND_SECCOMP."""
    done = subprocess.run([sys.executable, "-c", _IN_A_NEW_USERNS], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"no user namespaces here: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr
    initial, code, reason = json.loads(done.stdout)
    assert (initial, code) == (False, errno.EPERM)
    assert reason.startswith("the engine runs rootless (in a user namespace of its own")
    assert "PTRACE_SEIZE with PTRACE_O_SUSPEND_SECCOMP -> EPERM" in reason
    assert "CAP_SYS_ADMIN in the initial user namespace" in reason
    assert os.uname().release in reason


def test_the_verdict_on_this_host_follows_the_kernels_answer() -> None:
    """The real probe, run as the route runs it (off the event loop)."""
    reason = trio.run(CheckpointProbe("crun", "crun").verdict)
    if _expected_errno() != 0:
        assert "PTRACE_SEIZE with PTRACE_O_SUSPEND_SECCOMP -> EPERM" in reason
    else:
        assert "PTRACE_SEIZE" not in reason and "rootless" not in reason
        if checkpoint.find_program("criu") is None:
            assert reason.startswith("criu is not installed")


class FakeHost:
    """Programs on the engine's host: which exist, and what each prints."""

    def __init__(self, found: dict[str, str]) -> None:
        self.found = found
        self.ran: list[list[str]] = []

    def find(self, name: str) -> str | None:
        return f"/usr/sbin/{name}" if name in self.found else None

    def run(self, argv: list[str]) -> tuple[int, str]:
        self.ran.append(argv)
        if argv[1] == "check":
            failing = "Error" in self.found["criu check"]
            return (1 if failing else 0), self.found["criu check"]
        return 0, self.found[Path(argv[0]).name]


def _reason(found: dict[str, str], code: int | None = 0, runtime: str = "crun") -> str:
    host = FakeHost(found)
    return CheckpointProbe(runtime, runtime, measure=lambda: code, run=host.run,
                           find=host.find).reason()


CRUN_CRIU = "crun version 1.21\n+SYSTEMD +SELINUX +CAP +SECCOMP +CRIU +YAJL\n"
CRUN_NO_CRIU = "crun version 1.8.1\n+SYSTEMD +SELINUX +APPARMOR +CAP +SECCOMP +EBPF +YAJL\n"
CRIU_GOOD = {"criu": "Version: 4.1.1\n", "criu check": "Looks good."}


@pytest.mark.parametrize(("found", "reason"), [
    ({}, "criu is not installed (Debian: apt-get install criu"),
    ({"criu": "Version: 3.17.1\n"}, "criu 3.17 is too old for this kernel"),
    ({"criu": "Version: 4.1.1\n", "criu check": "Error (criu/mount.c:381): mnt: No parent"},
     "fails: Error (criu/mount.c:381)"),
    ({**CRIU_GOOD, "crun": CRUN_NO_CRIU}, "crun version 1.8.1 is built without CRIU"),
    ({**CRIU_GOOD, "crun": CRUN_CRIU}, "but this version of hutch does not checkpoint"),
])
def test_where_the_kernel_allows_it_the_host_is_described(found: dict[str, str],
                                                          reason: str) -> None:
    said = _reason(found)
    assert reason in said
    assert "PTRACE_SEIZE" not in said and "CAP_SYS_ADMIN" not in said


def test_runc_has_no_build_flag_to_check() -> None:
    assert "runtime runc can checkpoint" in _reason(dict(CRIU_GOOD), runtime="runc")


def test_a_refusing_kernel_comes_first_and_criu_check_is_not_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint, "in_initial_userns", lambda: False)
    host = FakeHost({**CRIU_GOOD, "crun": CRUN_NO_CRIU})
    said = CheckpointProbe("crun", "crun", measure=lambda: errno.EPERM, run=host.run,
                           find=host.find).reason()
    assert said.startswith("the engine runs rootless")
    assert "-> EPERM" in said and said.endswith("bookworm's 1.8.1 does not))")
    assert not any(argv[1] == "check" for argv in host.ran)


def test_a_root_engine_refused_by_its_kernel_is_not_called_rootless(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint, "in_initial_userns", lambda: True)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    said = _reason(dict(CRIU_GOOD), code=errno.EINVAL)
    assert "rootless" not in said and "-> EINVAL" in said
    assert "CONFIG_CHECKPOINT_RESTORE" in said


def test_an_unasked_kernel_is_said() -> None:
    assert _reason({}, code=None).endswith("; the kernel could not be asked (no `sleep` child "
                                           "to trace)")


def test_program_output_is_kept_while_the_file_is_unchanged(tmp_path: Path) -> None:
    """``criu check`` takes 0.06 s: asked once per criu binary, again once it changes."""
    criu = tmp_path / "criu"
    criu.write_text("v4")
    host = FakeHost(dict(CRIU_GOOD))
    probe = CheckpointProbe("runc", "runc", measure=lambda: 0, run=host.run,
                            find=lambda name: str(criu) if name == "criu" else None)
    for _ in range(3):
        trio.run(probe.verdict)
    assert len(host.ran) == 2  # --version and check, once
    criu.write_text("v4.2")  # an upgrade while the engine runs
    trio.run(probe.verdict)
    assert len(host.ran) == 4


def test_a_program_that_could_not_run_is_asked_again(tmp_path: Path) -> None:
    crun = tmp_path / "crun"
    crun.write_text("")
    ran: list[list[str]] = []

    def timing_out(argv: list[str]) -> tuple[int, str]:
        ran.append(argv)
        return -1, "timed out after 30 seconds"

    probe = CheckpointProbe("crun", str(crun), measure=lambda: errno.EPERM, run=timing_out,
                            find=lambda name: str(crun) if name == str(crun) else None)
    for _ in range(2):
        assert trio.run(probe.verdict).endswith(
            f"; `{crun} --version` could not run: timed out after 30 seconds)")
    assert ran == [[str(crun), "--version"]] * 2
