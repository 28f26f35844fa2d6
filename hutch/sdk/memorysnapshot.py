"""Modal's memory snapshots (``sb._experimental_snapshot()``,
``Sandbox._experimental_from_snapshot(snapshot)``, ``Sandbox.create(
_experimental_enable_snapshot=True)``), which hutch refuses with the reason measured on
the host the call runs on.

Why refused: a memory snapshot is a CRIU checkpoint of the sandbox's processes, and every
sandbox process runs under hutch's seccomp filter.  CRIU can only dump a process under a
filter after suspending it (``PTRACE_O_SUSPEND_SECCOMP``), which Linux allows only with
``CAP_SYS_ADMIN`` in the *initial* user namespace (``check_ptrace_options`` in
``kernel/ptrace.c``); a rootless engine's capabilities are in its own user namespace.
Measured on Linux 6.18 with Debian trixie's criu 4.1.1 run unprivileged in a user, mount,
pid, net and ipc namespace: ``criu check --unprivileged`` says "Looks good", a plain Python
process is dumped and restored with its variables, but the same process under a one-rule
filter fails with "suspending seccomp failed: Operation not permitted"; crun 1.21's
``checkpoint`` also needs a freezer cgroup, which a rootless engine on a cgroup v1 host
is not delegated.  As root it works (criu 4.1.1 and crun 1.21 with ``+CRIU`` restored a
seccomp-confined container's Python process with its variables), but not with what
Debian bookworm ships: its criu
3.17.1 fails ``criu check`` on this kernel ("vdso: Failed to fill self vdso symtable"), its
crun 1.8.1 is built without CRIU, and trixie's criu needs glibc 2.38 (bookworm: 2.36).
The whole experiment: docs/limits.md, "Memory snapshots".

So the reason is worked out at call time, not written once: a rootless engine gets the
kernel's answer measured just now (a ``PTRACE_SEIZE`` asking for that option, from this
process: 0.6 ms here), a root engine the state of its host's criu and runtime (``criu
check``: 0.06 s with criu 4.1.1), so a root engine on a host where CRIU works is told that this
version of hutch does not drive it, not that the kernel forbids it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, TypeVar

import anyio

from hutch.api import urls
from hutch.exception import ClientClosed, InvalidError
from hutch.sdk import options, syncbridge
from hutch.sdk.syncbridge import static_direct, synchronize
from hutch.sdk.transport import client

T = TypeVar("T")

PTRACE_SEIZE = 0x4206
#: ptrace option that lets a tracer (CRIU) run code in a tracee past its seccomp filter.
PTRACE_O_SUSPEND_SECCOMP = 1 << 21
#: Where the experiment is written up; every refusal names it.
DOC = 'docs/limits.md, "Memory snapshots"'
#: The oldest criu that ran on the kernel measured (6.18): 3.17.1 failed its vDSO check.
MIN_CRIU = (4, 0)
_CHECK_TIMEOUT_S = 30


def suspend_seccomp_errno() -> int | None:
    """Ask the kernel, now, whether this process may suspend a tracee's seccomp filter:
    0 if it may, the errno it answered (``EPERM``: no ``CAP_SYS_ADMIN`` in the initial user
    namespace), None where it could not be asked.  The option is checked before anything
    about the tracee, so a ``sleep`` child of ours (no filter) is enough."""
    sleep = shutil.which("sleep")
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    if sleep is None or not hasattr(libc, "ptrace"):
        return None
    child = subprocess.Popen([sleep, "30"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ctypes.set_errno(0)
        done = libc.ptrace(ctypes.c_long(PTRACE_SEIZE), ctypes.c_int(child.pid),
                           ctypes.c_void_p(0), ctypes.c_void_p(PTRACE_O_SUSPEND_SECCOMP))
        return 0 if done == 0 else ctypes.get_errno()
    finally:
        child.kill()  # a traced child dies of SIGKILL all the same
        child.wait()


def _rootless_reason(info: Mapping[str, Any], measure: Callable[[], int | None]) -> str:
    kernel = os.uname().release
    measured = measure() if os.geteuid() != 0 else None
    if measured == 0:  # a kernel or a user that allows it: the rest still stands
        now = ("this process may suspend seccomp (PTRACE_O_SUSPEND_SECCOMP allowed just "
               "now), but the engine's namespace is not the initial one")
    elif measured is not None:
        now = (f"measured just now: PTRACE_SEIZE with PTRACE_O_SUSPEND_SECCOMP -> "
               f"{errno.errorcode.get(measured, measured)}")
    else:
        now = "not measured from this process"
    return (f"the engine runs rootless (user namespace mode {info.get('userns_mode')!r}) "
            f"and CRIU cannot checkpoint a sandbox from its user namespace on Linux {kernel}: "
            "every sandbox process runs under hutch's seccomp filter, and dumping it needs "
            "PTRACE_O_SUSPEND_SECCOMP, which the kernel grants only with CAP_SYS_ADMIN in the "
            f"initial user namespace ({now}; criu 4.1.1 --unprivileged: 'suspending seccomp "
            "failed: Operation not permitted'); crun's checkpoint also needs a freezer cgroup, "
            "which a rootless engine on a cgroup v1 host is not delegated")


def _run(argv: list[str]) -> tuple[int, str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_CHECK_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return -1, str(exc)
    return done.returncode, done.stdout + done.stderr


def _find_criu() -> str | None:
    return shutil.which("criu") or next(
        (p for p in ("/usr/sbin/criu", "/sbin/criu") if os.access(p, os.X_OK)), None)


def _root_reason(info: Mapping[str, Any], run: Callable[[list[str]], tuple[int, str]],
                 find: Callable[[str], str | None]) -> str:
    criu = find("criu")
    if criu is None:
        return ("criu is not installed (Debian: apt-get install criu; bookworm's 3.17.1 "
                "fails on Linux 6.18, criu >= 4.0 is needed)")
    code, out = run([criu, "--version"])
    found = re.search(r"Version:\s*(\d+)\.(\d+)", out)
    version = (int(found.group(1)), int(found.group(2))) if found else None
    if version is not None and version < MIN_CRIU:
        return (f"criu {version[0]}.{version[1]} is too old for this kernel (Debian "
                "bookworm's 3.17.1 fails `criu check` on Linux 6.18: 'vdso: Failed to fill "
                "self vdso symtable'); criu >= 4.0 is needed")
    if os.geteuid() == 0:
        code, out = run([criu, "check"])
        if code != 0:
            errors = [line for line in out.splitlines() if "Error" in line] or [out.strip()]
            return f"`criu check` fails on this host: {errors[0].strip()[:300]}"
    runtime = str(info.get("runtime") or "crun")
    binary = find(runtime)
    if runtime == "crun" and binary is not None:
        code, out = run([binary, "--version"])
        if "+CRIU" not in out:
            first = out.splitlines()[0] if out else "crun"
            return (f"{first} is built without CRIU (`crun --version` lacks +CRIU; Debian "
                    "trixie's crun 1.21 has it, bookworm's 1.8.1 does not)")
    return ("this host has what a root engine would need (criu passes its check, the "
            f"runtime {runtime} can checkpoint), but this version of hutch does not "
            "checkpoint sandboxes")


def _find(name: str) -> str | None:
    return _find_criu() if name == "criu" else shutil.which(name)


def refusal_reason(info: Mapping[str, Any], *,
                   measure: Callable[[], int | None] | None = None,
                   run: Callable[[list[str]], tuple[int, str]] | None = None,
                   find: Callable[[str], str | None] | None = None) -> str:
    """Why this engine (``info``: ``GET /v1/engine``) cannot take or restore memory
    snapshots, measured now (blocking: run it off the event loop).  ``measure``, ``run``
    and ``find`` stand in for the kernel probe, running a program and finding one."""
    if info.get("userns_mode") != "root":
        return _rootless_reason(info, measure or suspend_seccomp_errno)
    return _root_reason(info, run or _run, find or _find)


async def _off_loop(fn: Callable[[], T]) -> T:
    if syncbridge.direct():  # a direct call may not suspend: it blocks its thread anyway
        return fn()
    return await anyio.to_thread.run_sync(fn)


async def refuse(where: str) -> NoReturn:
    """:class:`InvalidError` for ``where`` with the reason measured on this engine's host."""
    info = await client().request("GET", urls.ENGINE)
    reason = await _off_loop(lambda: refusal_reason(info))
    raise InvalidError(f"{where}: memory snapshots are not available: {reason} ({DOC})")


class _KeepName:
    def __repr__(self) -> str:
        return "<the snapshotted sandbox's name>"


#: Modal's default for ``name=``: restore under the name the snapshotted sandbox had.
KEEP_NAME: Any = _KeepName()


class SandboxMemorySnapshots:
    """The part of :class:`hutch.sdk.sandbox.Sandbox` for memory snapshots, with Modal 1.6's
    signatures; each call raises :class:`InvalidError` with the reason measured at call
    time (see the module)."""

    #: let go of (``detach``): no call may use it any more (as in ``SandboxAccess``)
    _detached: bool

    @synchronize
    async def _experimental_snapshot(self) -> NoReturn:
        """Modal: a snapshot of the sandbox's memory and files.  Raises
        :class:`InvalidError` with the measured reason (``ClientClosed`` when detached)."""
        if self._detached:
            raise ClientClosed("Unable to perform operation on a detached sandbox")
        await refuse("Sandbox._experimental_snapshot")

    @static_direct()
    async def _experimental_from_snapshot(snapshot: Any, client: Any = None, *,
                                          name: str | None = KEEP_NAME) -> NoReturn:
        """Modal: a new sandbox restored from ``snapshot``.  Raises :class:`InvalidError`
        with the measured reason."""
        options.reject_unsupported({"client": client}, "Sandbox._experimental_from_snapshot")
        if name is not KEEP_NAME and name is not None:
            options.check_object_name(name, "Sandbox")
        await refuse("Sandbox._experimental_from_snapshot")
