"""Hostile code against the engine's own processes: what a sandbox can see of them, and
what it can do to them.

The engine starts each command from a zygote that lives outside the sandbox's pid
namespace.  Between ``clone`` and ``execve`` the new command is already a process of the
sandbox (its pid namespace is the sandbox's) but still runs the zygote's code, in the
zygote's memory (``posix_spawn`` is a vfork).  An attacker who finds that moment and may
write the child's memory (``/proc/PID/mem``, ``process_vm_writev``, ``ptrace``) runs code
in the zygote, outside the sandbox.  The window is widened here on purpose with a large
command line (``execve`` copies it before it leaves the old memory): the test proves it
saw the window, and that nothing in it could be opened for writing.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import hutch
from hutch.sdk.transport import request_blocking
from tests.helpers import process_with_pid, wait_for

T = TypeVar("T")

#: Watches ``/proc`` for a process that still runs the zygote's code and tries to write
#: its memory every way a sandbox process can.  Prints one JSON object per sighting.
ATTACKER = r"""
import ctypes, errno, json, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
buf = ctypes.create_string_buffer(8)
local = iovec(ctypes.cast(buf, ctypes.c_void_p), 8)

def zygote_code(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return pid != os.getpid() and b"forkserver.py\0" in f.read(4096)
    except OSError:
        return False

def writable_address(pid):
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                addresses, perms = line.split()[:2]
                if perms.startswith("rw"):
                    return int(addresses.split("-")[0], 16)
    except OSError:
        pass
    return 0x10000  # unknown (maps is refused too): any address shows a refusal

def err(e):
    return errno.errorcode.get(e, str(e))

def attack(pid):
    out = {"pid": pid}
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDWR)
    except OSError as exc:
        out["mem"] = err(exc.errno)
    else:
        os.close(fd)
        out["mem"] = "OPENED"
    # the same 8 bytes read and written back: harmless, but proof of access
    remote = iovec(writable_address(pid), 8)
    res = libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if res == 8:
        res = libc.process_vm_writev(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    out["vm_writev"] = "ok" if res == 8 else err(ctypes.get_errno())
    # Were both tried on the zygote's memory?  Only then does their result count.
    out["still_zygote"] = zygote_code(pid)
    if not out["still_zygote"]:
        out["ptrace"] = "not tried"
    elif libc.ptrace(0x4206, pid, 0, 0) == 0:  # PTRACE_SEIZE (the same permission check)
        # Still the zygote's code after the attach: the attach was to the zygote's memory.
        # Otherwise it may have come after the execve (the command's own memory): "late".
        out["ptrace"] = "ATTACHED" if zygote_code(pid) else "late"
        os.kill(pid, 9)  # whatever it is by now: end it, and reap it as its tracer (__WALL)
        os.waitpid(pid, 0x40000000)
    else:
        out["ptrace"] = err(ctypes.get_errno())
    return out

deadline = time.monotonic() + float(sys.argv[1])
seen = set()
caught = 0
print("ready", flush=True)
while time.monotonic() < deadline and caught < 10:
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in seen:
            continue
        pid = int(name)
        if zygote_code(pid):
            seen.add(pid)
            try:
                out = attack(pid)
            except OSError:
                continue  # gone already
            if out["still_zygote"]:  # (the others had run their execve first)
                caught += 1
                print(json.dumps(out), flush=True)
"""


def test_a_command_being_started_cannot_be_used_to_reach_the_zygote(
        sandbox: hutch.Sandbox) -> None:
    attacker = sandbox.exec("python3", "-c", ATTACKER, "60")
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.extend(attacker.stdout), daemon=True)
    reader.start()
    wait_for(lambda: "".join(chunks), timeout=30, what="the attacker to start")
    assert "".join(chunks).startswith("ready\n")
    # A long command line keeps execve in the zygote's memory for a millisecond or so.
    args = ["x" * 4000] * 16

    def caught() -> list[dict[str, Any]]:
        lines = "".join(chunks).splitlines()[1:]
        return [s for s in map(json.loads, lines) if s.get("still_zygote")]

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(caught()) < 3 and attacker.poll() is None:
        _within(30, sandbox.exec("true", *args).wait)  # (its exit code may be spoilt)
    attacker.kill()
    reader.join(10)
    sightings = caught()
    assert sightings, ("the attacker never caught a command before its execve (a blind "
                       f"test): {''.join(chunks)!r}")
    for s in sightings:  # each one was the zygote's memory while it was tried
        assert s["mem"] != "OPENED", s
        assert s["vm_writev"] != "ok", s
        assert s["ptrace"] != "ATTACHED", s


def _host_pid_of(cmdline: bytes) -> int:
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and Path(f"/proc/{entry}/cmdline").read_bytes() == cmdline:
                return int(entry)
        except OSError:
            pass
    return 0


def test_terminate_does_not_kill_a_process_that_took_an_ended_execs_pid(
        engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create(timeout=120)
    try:
        marker = f"0.{uuid.uuid4().int % 10**9:09d}"
        p = sb.exec("sleep", "30", marker)  # sleep adds up its arguments
        pid = wait_for(lambda: _host_pid_of(b"sleep\0" + b"30\0" + marker.encode() + b"\0"),
                       what="the exec's host pid")
        p.kill()
        assert p.wait() != 0
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), what="the exec's pid to be free")
        victim = process_with_pid(pid, ["sleep", "300"])
    except BaseException:
        sb.terminate()
        raise
    try:
        sb.terminate(wait=True)
        assert victim.poll() is None, "terminating the sandbox killed an unrelated process"
    finally:
        victim.kill()
        victim.wait()


def _within(seconds: float, call: Callable[[], T]) -> T:
    """``call()``'s result, failing (not hanging) if it takes longer than ``seconds``."""
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(call).result(timeout=seconds)
    except TimeoutError:
        raise AssertionError(f"{call} took more than {seconds} s") from None
    finally:
        pool.shutdown(wait=False)


def _zygotes() -> set[int]:
    """Host pids of the engine's zygotes (children of its fork server)."""
    found = set()
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and b"forkserver.py" in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.add(int(entry))
        except OSError:
            pass
    servers = {p for p in found if Path(f"/proc/{p}/stat").read_text().split()[3] not in
               {str(q) for q in found}}
    return found - servers


def test_a_fifo_for_etc_passwd_does_not_wedge_the_zygote(engine: dict[str, Any]) -> None:
    """The zygote reads the sandbox's /etc/passwd for HOME: a FIFO there used to block it
    in open() for good, every later exec with it, and the sandbox's end (the zygote, outside
    the sandbox's pid namespace, outlived it)."""
    sb = hutch.Sandbox.create(timeout=120)
    before = _zygotes()
    try:
        assert sb.exec("sh", "-c", "rm /etc/passwd && mkfifo /etc/passwd").wait() == 0
        p = sb.exec("sh", "-c", "echo $HOME")  # no HOME given: the zygote looks it up
        assert _within(30, p.wait) == 0
        assert p.stdout.read() == "/\n"
    finally:
        started = time.monotonic()
        sb.terminate(wait=True)
    assert time.monotonic() - started < 10
    wait_for(lambda: not (_zygotes() - before), timeout=10, what="the sandbox's zygote to end")


def _status(pid: int) -> dict[str, str]:
    fields = (line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {k: v.strip() for k, v in fields}


def test_slirp4netns_runs_confined(engine: dict[str, Any]) -> None:
    """slirp4netns parses every packet a sandbox sends: it runs as podman runs it, in a
    mount namespace of its own, with no capability but CAP_NET_BIND_SERVICE, under a
    seccomp filter, and with none of the engine's environment (which came from the
    client that started it: here HUTCH_RUNTIME_DIR and HUTCH_DATA_DIR at least)."""
    daemon = request_blocking("GET", "/v1/engine")["pid"]  # (now: a test may restart it)
    engine_env = Path(f"/proc/{daemon}/environ").read_bytes().split(b"\0")
    assert any(v.startswith(b"HUTCH_") for v in engine_env)  # (what must not be passed on)
    sb = hutch.Sandbox.create(timeout=120)
    try:
        slirp = int((Path(engine["data_dir"]) / "sandboxes" / sb.object_id
                     / "slirp4netns.pid").read_text())
        pause = int((Path(os.environ["HUTCH_RUNTIME_DIR"]) / "pause.pid").read_text())
        status = _status(slirp)
        assert status["Seccomp"] == "2"  # a filter
        assert int(status["CapEff"], 16) & ~(1 << 10) == 0  # CAP_NET_BIND_SERVICE at most
        assert int(status["CapBnd"], 16) & ~(1 << 10) == 0
        assert os.stat(f"/proc/{slirp}/ns/mnt").st_ino != os.stat(f"/proc/{pause}/ns/mnt").st_ino
        environ = Path(f"/proc/{slirp}/environ").read_bytes().split(b"\0")
        assert not any(v.startswith(b"HUTCH_") for v in environ), environ
    finally:
        sb.terminate()
