"""Hostile files against the engine: FIFOs, devices, sockets, leases, symlink loops and huge
directories, planted by code in a real sandbox (or in a volume it mounts) and then named in
file calls of the real SDK, as a careless caller (or an agent) would.

Each attack checks three things, measured rather than assumed:

1. the call answers within a bound, with a typed ``hutch.exception`` error where it cannot
   do what was asked (before the fixes a lease held a read for 45 s of engine CPU, and a
   FIFO held a volume copy for good);
2. meanwhile the engine answers a health request, and another sandbox can be created and
   used, each within a second (before, 41 copies onto FIFOs used up trio's 40 worker
   threads and no sandbox could be created any more; a 300,000-entry listing held the
   health answer for 3.6 s);
3. afterwards no engine thread stays blocked: the daemon's thread count comes back down.

Calls that might hang run in daemon threads joined with a deadline, so a regression fails
the test instead of hanging the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

import hutch
from hutch.exception import (
    SandboxFilesystemBusyError,
    SandboxFilesystemError,
)
from hutch.sdk.transport import request_blocking
from tests.helpers import hutch_cli, wait_for

T = TypeVar("T")

#: A refused call answers within this many seconds (it used to take 45 s, or forever).
REFUSED_WITHIN = 3.0
#: The engine's health answer and another sandbox's calls, during an attack.
RESPONSIVE = 1.0
#: Threads the daemon may have beyond its count before the attack, once its idle workers
#: have had their 10 s to leave (trio's thread cache).
THREAD_SLACK = 3

LEASE = r"""
import fcntl, os, signal, sys, time
signal.signal(signal.SIGIO, signal.SIG_IGN)  # a lease break must not end the holder
path, kind = sys.argv[1], sys.argv[2]
with open(path, "w") as f:
    f.write("secret")
fd = os.open(path, os.O_RDONLY if kind == "r" else os.O_WRONLY)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK if kind == "r" else fcntl.F_WRLCK)
print("leased", flush=True)
time.sleep(600)
"""

MANY_FILES = r"""
import os, sys
os.makedirs(sys.argv[1], exist_ok=True)
os.chdir(sys.argv[1])
for i in range(int(sys.argv[2])):
    os.close(os.open(f"f{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644))
print("made", flush=True)
"""


# measuring -------------------------------------------------------------------------------
def _within(call: Callable[[], T], seconds: float, what: str) -> tuple[T | BaseException, float]:
    """Run ``call`` in a daemon thread: (its result or exception, seconds taken); fails if
    it has not answered within ``seconds`` (the thread is left behind, not waited for)."""
    box: list[T | BaseException] = []

    def run() -> None:
        try:
            box.append(call())
        except BaseException as exc:
            box.append(exc)

    start = time.monotonic()
    thread = threading.Thread(target=run, daemon=True, name=f"attack: {what}")
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise AssertionError(f"{what}: no answer within {seconds} s")
    return box[0], time.monotonic() - start


def refused(call: Callable[[], object], what: str,
            kind: type[BaseException] = SandboxFilesystemError) -> BaseException:
    """``call`` raises a ``kind`` within ``REFUSED_WITHIN`` seconds."""
    outcome, _ = _within(call, REFUSED_WITHIN, what)
    assert isinstance(outcome, kind), f"{what}: {outcome!r} is not a {kind.__name__}"
    return outcome


def engine_pid() -> int:
    return int(request_blocking("GET", "/v1/engine")["pid"])


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no thread count for {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def others_stay_fast(bystander: hutch.Sandbox) -> None:
    """Health, a file round trip and an exec in ``bystander``, and a new sandbox made and
    used: each within ``RESPONSIVE`` seconds."""
    def round_trip() -> None:
        bystander.filesystem.write_bytes(b"still here", "/tmp/bystander")
        assert bystander.filesystem.read_bytes("/tmp/bystander") == b"still here"

    def exec_echo(sb: hutch.Sandbox) -> None:
        p = sb.exec("echo", "ok")
        assert p.stdout.read() == "ok\n" and p.wait() == 0

    checks: list[tuple[str, Callable[[], object]]] = [
        ("health", lambda: request_blocking("GET", "/v1/health")),
        ("a bystander's file round trip", round_trip),
        ("a bystander's exec", lambda: exec_echo(bystander)),
    ]
    for what, check in checks:
        outcome, took = _within(check, 10 * RESPONSIVE, what)
        assert not isinstance(outcome, BaseException), f"{what}: {outcome!r}"
        assert took < RESPONSIVE, f"{what} took {took:.2f} s"
    outcome, took = _within(lambda: hutch.Sandbox.create(timeout=60), 10 * RESPONSIVE,
                            "creating a sandbox")
    assert isinstance(outcome, hutch.Sandbox), f"creating a sandbox: {outcome!r}"
    try:
        assert took < RESPONSIVE, f"creating a sandbox took {took:.2f} s"
        exec_echo(outcome)
    finally:
        outcome.terminate()


#: Times health requests until a line (or EOF) arrives on stdin; prints the slowest, in
#: seconds.  A process of its own, so that the caller's own work (decoding a 25 MB
#: listing holds this process's GIL) is not taken for the engine's.
PROBE = """
import select, sys, time
from hutch.sdk.transport import request_blocking
worst = 0.0
while not select.select([sys.stdin], [], [], 0.02)[0]:
    start = time.monotonic()
    request_blocking("GET", "/v1/health")
    worst = max(worst, time.monotonic() - start)
print(worst, flush=True)
"""


def health_during(call: Callable[[], T]) -> tuple[T | BaseException, float]:
    """``call``'s outcome, and the slowest health answer (seconds) while it ran, measured
    by another process."""
    probe = subprocess.Popen([sys.executable, "-c", PROBE], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        outcome, _ = _within(call, 300, "the call")
    finally:
        out, _ = probe.communicate("stop\n", timeout=30)
    return outcome, float(out)


def threads_come_back(pid: int, before: int) -> None:
    """The daemon's threads return to (about) their count before the attack."""
    wait_for(lambda: threads_of(pid) <= before + THREAD_SLACK, timeout=30,
             what=f"the engine's threads to come back to {before} (+{THREAD_SLACK})")


# fixtures --------------------------------------------------------------------------------
@pytest.fixture
def bystander(engine: dict[str, Any]) -> Iterator[hutch.Sandbox]:
    sb = hutch.Sandbox.create(timeout=600)
    yield sb
    sb.terminate()


@pytest.fixture
def volume(engine: dict[str, Any]) -> Iterator[hutch.Volume]:
    name = f"traps-{uuid.uuid4().hex[:12]}"
    vol = hutch.Volume.from_name(name, create_if_missing=True)
    yield vol
    hutch.Volume.delete(name)


@pytest.fixture
def attacker(volume: hutch.Volume) -> Iterator[hutch.Sandbox]:
    """A sandbox that mounts ``volume`` at /vol."""
    sb = hutch.Sandbox.create(timeout=600, volumes={"/vol": volume})
    yield sb
    sb.terminate(wait=True)


def sh(sb: hutch.Sandbox, script: str) -> str:
    p = sb.exec("sh", "-c", f"({script}) 2>&1", timeout=120)
    out = p.stdout.read()
    assert p.wait() == 0, (script, out)
    return out


def hold(sb: hutch.Sandbox, *argv: str, ready: str) -> Any:
    """Start a long-lived process in ``sb`` and wait for its first line, ``ready``."""
    p = sb.exec(*argv, timeout=600)
    line = next(iter(p.stdout))
    assert line.strip() == ready, line
    return p


# attacks ---------------------------------------------------------------------------------
def test_fifos_sockets_and_devices_are_refused_at_once(attacker: hutch.Sandbox,
                                                       bystander: hutch.Sandbox) -> None:
    sh(attacker, "mkfifo /tmp/fifo /vol/fifo && python3 -c 'import socket; "
                 "socket.socket(socket.AF_UNIX).bind(\"/tmp/sock\")'")
    fs = attacker.filesystem
    for path in ("/tmp/fifo", "/tmp/sock", "/dev/zero", "/dev/null", "/vol/fifo"):
        error = refused(lambda p=path: fs.read_bytes(p), f"read {path}")
        assert "not a regular file" in str(error).lower(), error
        refused(lambda p=path: attacker.open(p, "rb").read(), f"open {path}")
        refused(lambda p=path: fs.write_bytes(b"x", p), f"write {path}")
        refused(lambda p=path: attacker.open(p, "a").close(), f"append to {path}")
    # a reader waits on the FIFO in the sandbox: the engine's open would succeed, so the
    # type check has to come before any byte is written
    reader = hold(attacker, "sh", "-c", "echo reading; cat /tmp/fifo", ready="reading")
    refused(lambda: fs.write_bytes(b"x" * (1 << 20), "/tmp/fifo"), "write a read FIFO")
    reader.kill()
    others_stay_fast(bystander)


def test_copies_onto_fifos_do_not_use_up_the_engines_threads(
        volume: hutch.Volume, attacker: hutch.Sandbox, bystander: hutch.Sandbox) -> None:
    pid = engine_pid()
    before = threads_of(pid)
    sh(attacker, "echo data > /vol/src && for i in $(seq 0 40); do mkfifo /vol/f$i; done")
    outcomes: list[BaseException | None] = []

    async def copy(i: int) -> None:
        try:
            with trio.fail_after(10):  # the red team's clients gave up after 10 s
                await volume.copy_files.aio(["/src"], f"/f{i}")
            outcomes.append(None)
        except BaseException as exc:
            outcomes.append(exc)

    async def attack() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(41):
                nursery.start_soon(copy, i)

    _, took = _within(lambda: trio.run(attack), 30, "41 copies onto FIFOs")
    assert len(outcomes) == 41
    assert all(isinstance(o, SandboxFilesystemError) for o in outcomes), \
        {repr(o) for o in outcomes}
    assert took < REFUSED_WITHIN * 2
    refused(lambda: volume.copy_files(["/f0"], "/copy"), "copy from a FIFO", Exception)
    refused(lambda: b"".join(volume.read_file("/f0")), "read a FIFO of a volume")
    get = hutch_cli("volume", "get", volume.name, "/f1", "/dev/null", timeout=10)
    assert get.returncode != 0 and b"not a regular file" in get.stderr.lower(), get.stderr
    others_stay_fast(bystander)
    threads_come_back(pid, before)


@pytest.mark.parametrize("kind", ["r", "w"])
def test_a_lease_neither_spins_nor_blocks_the_engine(kind: str, attacker: hutch.Sandbox,
                                                     volume: hutch.Volume,
                                                     bystander: hutch.Sandbox,
                                                     tmp_path: Path) -> None:
    """A read lease is broken by an open for writing, a write lease by any open; the
    holder ignores the break (SIGIO), so a waiting open would wait the kernel's
    lease-break-time (45 s), and the engine's retry loop spun for all of it."""
    pid = engine_pid()
    holders = [hold(attacker, "python3", "-c", LEASE, path, kind, ready="leased")
               for path in ("/tmp/leased", "/vol/leased")]
    cpu = cpu_seconds(pid)
    fs = attacker.filesystem
    upload = tmp_path / "upload"
    upload.write_bytes(b"x")

    def volume_put() -> None:
        with volume.batch_upload(force=True) as batch:
            batch.put_file(upload, "/leased")

    calls: list[tuple[str, Callable[[], object]]] = [
        ("write", lambda: fs.write_bytes(b"x", "/tmp/leased")),
        ("open for writing", lambda: attacker.open("/tmp/leased", "w").close()),
        ("volume put", volume_put),
    ]
    if kind == "w":
        calls += [("read", lambda: fs.read_bytes("/tmp/leased")),
                  ("open for reading", lambda: attacker.open("/tmp/leased").read()),
                  ("volume read", lambda: b"".join(volume.read_file("/leased")))]
    for what, call in calls:
        error = refused(call, f"{what} of a leased file", SandboxFilesystemBusyError)
        assert "lease" in str(error), error
    put = hutch_cli("volume", "put", volume.name, str(upload), "/leased", timeout=10)
    assert put.returncode != 0 and b"lease" in put.stderr, put.stderr
    assert cpu_seconds(pid) - cpu < 2.0, "the engine spun on a leased file"
    others_stay_fast(bystander)
    for p in holders:
        p.kill()


def test_symlink_loops_fail_fast(attacker: hutch.Sandbox, bystander: hutch.Sandbox) -> None:
    sh(attacker, "ln -s /tmp/b /tmp/a && ln -s /tmp/a /tmp/b && ln -s /tmp/a /vol/loop "
                 "&& mkdir -p /tmp/d && ln -s .. /tmp/d/up")
    fs = attacker.filesystem
    refused(lambda: fs.read_bytes("/tmp/a"), "read a loop")
    refused(lambda: fs.write_bytes(b"x", "/tmp/a/x"), "write under a loop")
    refused(lambda: attacker.ls("/tmp/a"), "list a loop")
    refused(lambda: attacker.mkdir("/tmp/a/x", parents=True), "mkdir under a loop")
    refused(lambda: list(attacker.watch("/tmp/a", timeout=1)), "watch a loop")
    deep = "/tmp/d/" + "up/" * 1000 + "x"
    refused(lambda: fs.read_bytes(deep), "read through 1000 '..' links")
    refused(lambda: fs.stat("/tmp/b/"), "stat a loop", SandboxFilesystemError)
    refused(lambda: attacker.ls("/tmp/a/"), "list a loop", SandboxFilesystemError)
    others_stay_fast(bystander)


def test_huge_directories_do_not_hold_the_engine(volume: hutch.Volume,
                                                 attacker: hutch.Sandbox,
                                                 bystander: hutch.Sandbox) -> None:
    count = 300_000
    made = attacker.exec("python3", "-c", MANY_FILES, "/vol/big", str(count), timeout=300)
    assert made.stdout.read() == "made\n" and made.wait() == 0
    sh(attacker, "mkdir -p /vol/tree && cd /vol/tree && for i in $(seq 1 300); "
                 "do mkdir -p d$i/e/f; done")
    # "big", its files, "tree" and its 900 directories
    in_volume = 1 + count + 1 + 900
    listings: list[tuple[str, Callable[[], int]]] = [
        ("sb.ls", lambda: len(attacker.ls("/vol/big"))),
        ("filesystem.list_files", lambda: len(attacker.filesystem.list_files("/vol/big"))),
        ("volume listdir", lambda: len(volume.listdir("/big"))),
        ("recursive volume listdir", lambda: len(volume.listdir("/", recursive=True))),
    ]
    for what, listing in listings:
        outcome, worst = health_during(listing)
        assert worst < 0.5, f"health took {worst:.2f} s during {what}"
        assert outcome == (in_volume if "recursive" in what else count), (what, outcome)
    started = time.monotonic()
    attacker.rm("/vol/big", recursive=True)
    assert time.monotonic() - started < 60
    others_stay_fast(bystander)


def test_a_recursive_watch_of_a_huge_tree_is_bounded(attacker: hutch.Sandbox,
                                                     bystander: hutch.Sandbox) -> None:
    """Every directory of a recursive watch costs one of the user's inotify watches (shared
    with the user's desktop and every sandbox) and was added on the event loop."""
    made = attacker.exec("python3", "-c", "import os\nfor i in range(5000): "
                         "os.makedirs(f'/tmp/tree/d{i}/e')\nprint('made')", timeout=120)
    assert made.stdout.read() == "made\n" and made.wait() == 0
    outcome, worst = health_during(
        lambda: list(attacker.watch("/tmp/tree", recursive=True, timeout=1)))
    assert worst < 0.5, f"health took {worst:.2f} s while a watch was set up"
    assert isinstance(outcome, SandboxFilesystemError), outcome
    assert "directories" in str(outcome)
    assert list(attacker.watch("/tmp/tree/d1", recursive=True, timeout=0.5)) == []
    others_stay_fast(bystander)

