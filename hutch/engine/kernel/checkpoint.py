"""Whether this engine could checkpoint a sandbox with CRIU (Modal's memory snapshots), asked
of the kernel and the host from inside the engine: ``GET /v1/engine/checkpoint``.

Why here and not in the SDK: the question is what the *engine* may do, in its own user
namespace, where CRIU would have to run; the SDK may be another user's process or run on
another machine, and its own answer (as root, say) would be the wrong one.

What is measured (docs/limits.md, "Memory snapshots", has the whole experiment):

* The kernel gate.  Every sandbox process runs under hutch's seccomp filter, and CRIU can
  dump such a process only after suspending its filter (``PTRACE_O_SUSPEND_SECCOMP``),
  which ``check_ptrace_options`` in ``kernel/ptrace.c`` allows only with ``CAP_SYS_ADMIN``
  in the *initial* user namespace, to a tracer not itself under seccomp.  The engine asks
  exactly that: ``PTRACE_SEIZE`` of a ``sleep`` child of its own with that option (the
  option is checked before anything about the tracee, so a child without a filter is
  enough), then kills and reaps the child.  A rootless engine on Linux 6.18 gets ``EPERM``
  (its capabilities are in the user namespace it made); root gets 0.  0.3 to 0.5 ms here,
  the spawn included.
* The host's tools (reported beside the kernel's refusal too): criu and its version
  (Debian bookworm's 3.17.1 fails ``criu check`` on Linux 6.18 with "vdso: Failed to fill
  self vdso symtable", so >= 4.0 is needed), ``criu check`` where the kernel allows the
  engine (0.06 s with criu 4.1.1; it fails otherwise for that reason), and the runtime's
  ``+CRIU`` build feature (``crun --version``: trixie's 1.21 has it, bookworm's 1.8.1 does
  not; runc drives the criu binary and has no such flag).

The kernel is asked at every call (its answer follows the engine's credentials, which do not
change while it runs, but asking costs under a millisecond); what a program printed is kept
for the daemon's lifetime while the program's file is unchanged, so installing criu while the
engine runs is seen at the next call.  A whole answer takes 4 to 7 ms the first time (``crun
--version``), 0.6 to 0.8 ms after (Linux 6.18, 2 cores, crun 1.8.1, no criu).  This version
of hutch checkpoints nothing, so the verdict is always "not supported"; the reason says what
would be missing first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import trio

PTRACE_SEIZE = 0x4206
#: ptrace option that lets a tracer (CRIU) run code in a tracee past its seccomp filter.
PTRACE_O_SUSPEND_SECCOMP = 1 << 21
#: The oldest criu that ran on the kernel measured (6.18): 3.17.1 failed its vDSO check.
MIN_CRIU = (4, 0)
#: Seconds a program asked about the host (``criu check``) may take.
RUN_TIMEOUT_S = 30

#: Runs a program: (exit status, what it printed); -1 where it could not run.
Run = Callable[[list[str]], tuple[int, str]]
#: Finds a program: its path, or None.
Find = Callable[[str], str | None]

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long


def suspend_seccomp_errno() -> int | None:
    """Ask the kernel, now, whether this process may suspend a tracee's seccomp filter: 0 if
    it may, else the errno it answered (``EPERM``: no ``CAP_SYS_ADMIN`` in the initial user
    namespace); None where it could not be asked (no ``sleep`` child could be started).
    Blocking, and the tracer is the calling thread: run the whole call in one worker
    thread."""
    sleep = shutil.which("sleep")
    if sleep is None:
        return None
    try:  # posix_spawn, not fork: the engine's page tables are not copied for a probe
        pid = os.posix_spawn(sleep, [sleep, "30"], {}, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, 1, 2)])
    except OSError:
        return None
    try:
        ctypes.set_errno(0)
        done = _libc.ptrace(PTRACE_SEIZE, pid, None, PTRACE_O_SUSPEND_SECCOMP)
        return 0 if done == 0 else ctypes.get_errno()
    finally:
        os.kill(pid, signal.SIGKILL)  # a traced child dies of SIGKILL all the same
        os.waitpid(pid, 0)  # ours, not reaped before: the pid cannot have been reused


def in_initial_userns() -> bool:
    """Whether this process's user namespace is the host's (its uid map is the identity)."""
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return False


def _rootless_as() -> str:
    """How the engine runs without root: its uid, or the host uid its user namespace maps
    its own uid to (the first line of the uid map)."""
    if in_initial_userns():
        return f"as uid {os.geteuid()}"
    try:
        with open("/proc/self/uid_map") as f:
            inside, outside, _ = f.readline().split()
    except (OSError, ValueError):
        return "in a user namespace of its own"
    return f"in a user namespace of its own, its uid {inside} being uid {outside} on the host"


def run_program(argv: list[str]) -> tuple[int, str]:
    """Run ``argv`` (stdin closed): its exit status and output, or -1 and why not."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return -1, str(exc)
    return done.returncode, done.stdout + done.stderr


def find_program(name: str) -> str | None:
    """``name`` on PATH, or (criu) in the sbin directories an ordinary user's PATH lacks."""
    found = shutil.which(name)
    if found is not None or name != "criu":
        return found
    return next((p for p in ("/usr/sbin/criu", "/sbin/criu") if os.access(p, os.X_OK)), None)


def _criu_version(output: str) -> tuple[int, int] | None:
    found = re.search(r"Version:\s*(\d+)\.(\d+)", output)
    return (int(found.group(1)), int(found.group(2))) if found else None


def criu_problem(run: Run, find: Find, *, check: bool) -> str | None:
    """What keeps this host's criu from checkpointing, or None; ``check``: run ``criu
    check`` too (only where the kernel gate is open: it fails otherwise for that reason)."""
    criu = find("criu")
    if criu is None:
        return ("criu is not installed (Debian: apt-get install criu; bookworm's 3.17.1 fails "
                "on Linux 6.18, criu >= 4.0 is needed)")
    version = _criu_version(run([criu, "--version"])[1])
    if version is not None and version < MIN_CRIU:
        return (f"criu {version[0]}.{version[1]} is too old for this kernel (Debian bookworm's "
                "3.17.1 fails `criu check` on Linux 6.18: 'vdso: Failed to fill self vdso "
                "symtable'); criu >= 4.0 is needed")
    if check:
        argv = [criu, "check"] if in_initial_userns() else [criu, "check", "--unprivileged"]
        code, out = run(argv)
        if code != 0:
            errors = [line for line in out.splitlines() if "Error" in line] or [out.strip()]
            return f"`{' '.join(argv[1:])}` fails: {errors[0].strip()[:300]}"
    return None


def runtime_problem(name: str, binary: str, run: Run, find: Find) -> str | None:
    """What keeps the engine's runtime from checkpointing, or None: a crun built without
    CRIU (runc has no build flag: it runs the criu binary)."""
    if name != "crun":
        return None
    path = find(binary)
    if path is None:
        return f"the runtime {binary} is not found"
    code, out = run([path, "--version"])
    if code == -1:
        return f"`{binary} --version` could not run: {out[:200]}"
    if "+CRIU" in out:
        return None
    first = out.splitlines()[0] if out.strip() else binary
    return (f"{first} is built without CRIU (`crun --version` lacks +CRIU; Debian trixie's "
            "crun 1.21 has it, bookworm's 1.8.1 does not)")


def _errno_name(code: int) -> str:
    return errno.errorcode.get(code, str(code))


def _kernel_refusal(code: int, rootless: bool) -> str:
    measured = ("measured by the engine just now: PTRACE_SEIZE with PTRACE_O_SUSPEND_SECCOMP "
                f"-> {_errno_name(code)}")
    kernel = os.uname().release
    if rootless:
        return (f"the engine runs rootless ({_rootless_as()}) "
                f"and CRIU cannot checkpoint a sandbox from its user namespace on Linux {kernel}:"
                " every sandbox process runs under hutch's seccomp filter, and dumping it needs "
                "PTRACE_O_SUSPEND_SECCOMP, which the kernel grants only with CAP_SYS_ADMIN in "
                f"the initial user namespace ({measured}; criu 4.1.1 --unprivileged: "
                "'suspending seccomp failed: Operation not permitted'); crun's checkpoint also "
                "needs a freezer cgroup, which a rootless engine on a cgroup v1 host is not "
                "delegated")
    why = ("a kernel built without CONFIG_CHECKPOINT_RESTORE or CONFIG_SECCOMP"
           if code == errno.EINVAL else "it needs CAP_SYS_ADMIN, a tracer not itself under "
           "seccomp, and Yama's ptrace_scope below 3")
    return (f"the kernel (Linux {kernel}) does not let the engine suspend a sandbox "
            f"process's seccomp filter, which CRIU must do to dump it ({measured}: {why})")


@dataclass(frozen=True)
class _Output:
    """What a program printed, and the identity of its file when it did."""

    stamp: tuple[int, int, int]
    answer: tuple[int, str]


class CheckpointProbe:
    """The engine's verdict on checkpointing (see the module), for its runtime ``name``
    (``crun``/``runc``) run as ``binary``; ``measure``, ``run`` and ``find`` stand in for
    the kernel probe, running a program and finding one."""

    def __init__(self, name: str, binary: str, *,
                 measure: Callable[[], int | None] = suspend_seccomp_errno,
                 run: Run = run_program, find: Find = find_program) -> None:
        self.name, self.binary = name, binary
        self._measure, self._run, self._find = measure, run, find
        self._outputs: dict[tuple[str, ...], _Output] = {}
        self._lock = trio.Lock()

    def _run_kept(self, argv: list[str]) -> tuple[int, str]:
        """``run(argv)``, answered from before while ``argv[0]``'s file is the same (a
        program that could not run, or timed out, is asked again next time)."""
        try:
            st = os.stat(argv[0])
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            return self._run(argv)
        kept = self._outputs.get(tuple(argv))
        if kept is None or kept.stamp != stamp:
            kept = _Output(stamp, self._run(argv))
            if kept.answer[0] != -1:
                self._outputs[tuple(argv)] = kept
        return kept.answer

    def reason(self) -> str:
        """Why this engine cannot checkpoint a sandbox, measured now (blocking: the kernel
        probe and the programs run in the calling thread)."""
        code = self._measure()
        rootless = not in_initial_userns() or os.geteuid() != 0
        criu = criu_problem(self._run_kept, self._find, check=code == 0)
        runtime = runtime_problem(self.name, self.binary, self._run_kept, self._find)
        if code is not None and code != 0:
            host = "; ".join(p for p in (criu, runtime) if p)
            return _kernel_refusal(code, rootless) + (f" (besides, on this host: {host})"
                                                     if host else "")
        first = criu or runtime
        if code is None:
            unasked = "the kernel could not be asked (no `sleep` child to trace)"
            return f"{first}; {unasked}" if first else unasked
        if first is not None:
            return first
        return ("this host has what checkpointing needs (the kernel lets the engine suspend "
                f"seccomp, criu passes its check, the runtime {self.name} can checkpoint), "
                "but this version of hutch does not checkpoint sandboxes")

    async def verdict(self) -> str:
        """:meth:`reason`, off the event loop (one call at a time: the kept outputs are
        shared)."""
        async with self._lock:
            return await trio.to_thread.run_sync(self.reason)
