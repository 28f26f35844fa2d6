"""Chaos: the engine's processes killed with SIGKILL at random moments, under load.

An engine of this test's own (its own runtime and data dirs, seeded with the session's
base image) serves creates, execs, file streams of a few MB and an image build from
several threads, while one of its processes -- daemon, pause process, fork server, a
zygote or a sandbox's slirp4netns -- is killed at a random moment (seeded, so a failure
can be replayed with the seed it prints).  Each round checks, from the caller's side:

- no call hangs past its deadline (every SDK call runs in a thread that must end); a call
  the crash interrupted may fail with one of the errors the SDK documents for that case,
  never with a wrong answer;
- the next calls after the crash succeed (a create and an exec);
- every sandbox listed as running can run a command.

At the end, with every sandbox terminated: no process of any of this test's sandboxes
runs, no slirp4netns of this engine, no mount of a sandbox in the pause process's mount
namespace, no sandbox's overlay directories; a volume written before the chaos still
holds its data.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import select
import shutil
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import hutch
from hutch import exception
from hutch.sdk.transport import request_blocking
from tests.helpers import children_of, cmdline_of, engine_dirs, process_alive, stop_engine, wait_for

ROUNDS = 8
#: Seconds any one SDK call may take, a crash and an engine restart included.
CALL_DEADLINE = 40.0
#: Errors a call may end with when the engine crashed under it (the SDK retries only what
#: is safe to repeat; a sandbox whose namespace died with the pause process is ended).
#: ConflictError: what a call on a sandbox gets once it ended (lost with its namespace
#: when the daemon dies after its pause process).
CRASH_ERRORS = (exception.ConnectionError, exception.SandboxTerminatedError,
                exception.ExecutionError, exception.NotFoundError, exception.ConflictError)
#: The engine's processes killed at random moments.  (A file stream once hung past the
#: deadline in the round after the pause process was killed, so the pause process was left
#: out for a while; the hang was the HTTP server's and had nothing to do with pause:
#: tests/security/test_stream_end.py.)
TARGETS = ["daemon", "pause", "fork server", "zygote", "slirp4netns"]
BLOB = random.Random(15).randbytes(3 << 20)


def _seed_image(source: Path, target: Path, ref: str) -> None:
    """A data dir whose image store holds ``ref`` (hard links to the session engine's
    blobs: its layers are unpacked by the new engine, nothing is downloaded)."""
    oci = target / "oci"
    if (oci / "index.json").exists():
        return
    blobs = oci / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    shutil.copy(source / "oci" / "oci-layout", oci / "oci-layout")
    index = json.loads((source / "oci" / "index.json").read_text())
    index["manifests"] = [m for m in index["manifests"]
                          if m.get("annotations", {}).get("org.opencontainers.image.ref.name")
                          == ref]
    assert len(index["manifests"]) == 1, f"the session engine has no {ref}"

    def link(digest: str) -> dict[str, Any]:
        hex_ = digest.split(":", 1)[1]
        os.link(source / "oci" / "blobs" / "sha256" / hex_, blobs / hex_)
        doc: dict[str, Any] = json.loads((blobs / hex_).read_bytes()) \
            if (blobs / hex_).stat().st_size < 1 << 20 else {}
        return doc

    manifest = link(index["manifests"][0]["digest"])
    link(manifest["config"]["digest"])
    for layer in manifest["layers"]:
        link(layer["digest"])
    (oci / "index.json").write_text(json.dumps(index))


@pytest.fixture
def chaos_engine(engine: dict[str, Any]) -> Iterator[dict[str, Any]]:
    runtime = Path(f"{os.environ['HUTCH_RUNTIME_DIR']}-chaos")
    data = Path(f"{engine['data_dir']}-chaos")
    data.mkdir(mode=0o700, exist_ok=True)
    _seed_image(Path(engine["data_dir"]), data, engine["default_image"])
    with engine_dirs(runtime, data):
        try:
            info: dict[str, Any] = request_blocking("GET", "/v1/engine")
            request_blocking("POST", "/v1/images/default")
            yield info
        finally:
            for sb in list(hutch.Sandbox.list()):
                sb.terminate()
            stop_engine()


def _ended(pidfd: int) -> bool:
    return bool(select.select([pidfd], [], [], 0)[0])


def _sigkill(pid: int) -> bool:
    """SIGKILL ``pid`` through a pidfd and wait for its end; False if it had gone."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        wait_for(lambda: _ended(pidfd), timeout=10, what=f"pid {pid} to die")
    finally:
        os.close(pidfd)
    return True




#: ``NS_GET_PARENT``: a namespace's parent.
NS_GET_PARENT = 0xB702


def _userns(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/user")
    except OSError:
        return "?"


def _under_userns(pid: int, userns: str) -> bool:
    """Whether ``pid`` runs in the user namespace ``userns`` (as ``readlink`` names it) or
    one below it (a zygote joined its sandbox's own)."""
    try:
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY)
    except OSError:
        return False
    try:
        for _ in range(4):
            st = os.fstat(fd)
            if f"user:[{st.st_ino}]" == userns:
                return True
            parent = fcntl.ioctl(fd, NS_GET_PARENT)
            os.close(fd)
            fd = parent
    except OSError:
        pass
    finally:
        os.close(fd)
    return False


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return 0


@dataclass
class Chaos:
    runtime: Path
    data: Path
    rng: random.Random
    sandbox: hutch.Sandbox | None = None
    failures: list[str] = field(default_factory=list)
    crash_errors: list[str] = field(default_factory=list)

    def find(self, target: str) -> int:
        """The host pid of one live process of kind ``target`` now (0: none)."""
        pid = self._find(target)
        return pid if pid and process_alive(pid) else 0

    def _find(self, target: str) -> int:
        daemon = _read_pid(self.runtime / "daemon.pid")
        if target == "daemon":
            return daemon
        if target == "pause":
            return _read_pid(self.runtime / "pause.pid")
        servers = [c for c in children_of(daemon) if b"forkserver" in cmdline_of(c)] \
            if daemon else []
        if target == "fork server":
            return servers[0] if servers else 0
        if target == "zygote":  # (also those a killed fork server left, adopted by init)
            userns = os.readlink(f"/proc/{daemon}/ns/user") if daemon else ""
            zygotes = [int(e) for e in os.listdir("/proc") if e.isdigit()
                       and b"forkserver.py" in cmdline_of(int(e)) and int(e) not in servers
                       and _under_userns(int(e), userns)]
            return self.rng.choice(zygotes) if zygotes else 0
        # (a restarted daemon adopts the sandboxes, not their slirp4netns as children)
        slirps = [int(e) for e in os.listdir("/proc") if e.isdigit() and
                  cmdline_of(int(e)).startswith(b"slirp4netns\0") and
                  str(self.data).encode() in cmdline_of(int(e))]
        return self.rng.choice(slirps) if slirps else 0

    def call(self, name: str, fn: Callable[[], object]) -> threading.Thread:
        """``fn`` in a thread of its own; what it raised is recorded."""
        def run() -> None:
            try:
                fn()
            except CRASH_ERRORS as exc:
                self.crash_errors.append(f"{name}: {type(exc).__name__}: {exc}")
            except BaseException as exc:  # a wrong answer, or an error of the wrong kind
                self.failures.append(f"{name}: {type(exc).__name__}: {exc}")

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        return thread


def _join(threads: list[threading.Thread], what: str) -> None:
    deadline = time.monotonic() + CALL_DEADLINE
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    hung = [t for t in threads if t.is_alive()]
    frames = sys._current_frames()
    where = {t.name: "".join(e for e in traceback.format_stack(frames[t.ident])
                             if "/hutch/" in e or "/tests/" in e)
             for t in hung if t.ident in frames}  # which call blocked, and in what
    assert not hung, f"{what}: calls still running after {CALL_DEADLINE} s: {where}"


def _create_and_exec(zygote_may_die: bool = False) -> hutch.Sandbox:
    """A new sandbox and a command in it.  ``zygote_may_die``: the round may kill the new
    sandbox's zygote while the command runs, which ends it with 137 (documented: a killed
    zygote ends the commands it started); any other outcome is a failure."""
    sb = hutch.Sandbox.create(timeout=300)
    p = sb.exec("echo", "created")
    out, code = p.stdout.read(), p.wait()
    if zygote_may_die and code == 137:
        return sb
    assert out == "created\n" and code == 0, (out, code)
    return sb


def _exec(sb: hutch.Sandbox, seconds: float = 0) -> None:
    p = sb.exec("sh", "-c", f"sleep {seconds}; head -c 200000 /dev/zero | wc -c")
    out = p.stdout.read()
    code = p.wait()
    if code == 0:  # (a zygote killed under it ends it with a signal's code)
        assert out == "200000\n", out


def _file_stream(sb: hutch.Sandbox, name: str) -> None:
    with sb.open(f"/tmp/{name}", "wb") as f:
        f.write(BLOB)
    with sb.open(f"/tmp/{name}", "rb") as f:
        assert f.read() == BLOB


def _build() -> None:
    image = hutch.Image.debian_slim().run_commands("echo x > /x")
    sb = hutch.Sandbox.create(image=image, timeout=120)
    try:
        p = sb.exec("cat", "/x")
        assert p.stdout.read() == "x\n"
    finally:
        sb.terminate()


def _usable(sb: hutch.Sandbox) -> bool:
    """Whether ``sb`` runs a command (False when it is not running any more)."""
    try:
        p = sb.exec("echo", "ok")
        return p.stdout.read() == "ok\n" and p.wait() == 0
    except exception.SandboxTerminatedError:
        return sb.poll() is not None


def _check_after_crash(chaos: Chaos, round: int) -> None:
    """The next calls succeed, and every sandbox listed as running is usable."""
    results: list[Any] = []
    errors = len(chaos.crash_errors)
    threads = [chaos.call("next create", lambda: results.append(_create_and_exec()))]
    _join(threads, f"round {round}: the next create")
    assert not chaos.failures, chaos.failures
    assert len(chaos.crash_errors) == errors, chaos.crash_errors[errors:]
    assert results, f"round {round}: the create after the crash failed"
    results[0].terminate()
    listed = list(hutch.Sandbox.list())
    usable: list[bool] = []
    threads = [chaos.call(f"listed {sb.object_id}", lambda sb=sb: usable.append(_usable(sb)))
               for sb in listed]
    _join(threads, f"round {round}: execs in the listed sandboxes")
    assert not chaos.failures, chaos.failures
    assert len(chaos.crash_errors) == errors, chaos.crash_errors[errors:]
    assert all(usable) and len(usable) == len(listed), \
        f"round {round}: a sandbox listed as running cannot be used"
    if chaos.sandbox is None or chaos.sandbox.object_id not in {s.object_id for s in listed}:
        chaos.sandbox = _create_and_exec()


def _sandbox_ids(data: Path) -> set[str]:
    return {d.name for d in (data / "sandboxes").iterdir()} \
        if (data / "sandboxes").exists() else set()


def _leftovers(data: Path, ids: set[str]) -> list[str]:
    """What is left of the sandboxes ``ids`` on the host: processes in their cgroups,
    slirp4netns of this engine, mounts, overlay directories."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cgroup = Path(f"/proc/{entry}/cgroup").read_text()
        except OSError:
            continue
        if any(i in cgroup for i in ids):
            found.append(f"process {entry} {cmdline_of(int(entry))[:60]!r} in {cgroup!r}")
        cmd = cmdline_of(int(entry))
        if b"slirp4netns" in cmd and str(data).encode() in cmd:
            found.append(f"slirp4netns {entry}")
    runtime = Path(os.environ["HUTCH_RUNTIME_DIR"])
    # the engine's mount namespace, as a live process of it sees it
    holder = [p for p in (_read_pid(runtime / "daemon.pid"), _read_pid(runtime / "pause.pid"))
              if p and process_alive(p)]
    if holder:
        mounts = Path(f"/proc/{holder[0]}/mountinfo").read_text()
        found += [f"mount {i}" for i in ids if f"sandboxes/{i}/" in mounts]
    for i in ids:
        found += [f"{i}/{sub}" for sub in ("upper", "work", "merged")
                  if (data / "sandboxes" / i / sub).exists()]
    return found


def test_chaos(chaos_engine: dict[str, Any], tmp_path: Path) -> None:
    seed = int(os.environ.get("HUTCH_CHAOS_SEED", time.time_ns() % 10**6))
    print(f"chaos seed {seed} (HUTCH_CHAOS_SEED replays it)")
    rng = random.Random(seed)
    data = Path(chaos_engine["data_dir"])
    before = _sandbox_ids(data)
    chaos = Chaos(Path(os.environ["HUTCH_RUNTIME_DIR"]), data, rng)
    volume_name = f"chaos-{uuid.uuid4().hex[:12]}"
    volume = hutch.Volume.from_name(volume_name, create_if_missing=True)
    marker = tmp_path / "marker"
    marker.write_text("kept\n")
    try:
        with volume.batch_upload() as batch:
            batch.put_file(marker, "/marker")
        chaos.sandbox = _create_and_exec()
        _build()  # built once here: a later build under chaos may find it cached
        order = TARGETS + [rng.choice(TARGETS) for _ in range(ROUNDS - len(TARGETS))]
        rng.shuffle(order)
        for round, target in enumerate(order):
            if target == "slirp4netns" and not chaos.find(target):
                # the long-lived sandbox's was killed in an earlier round (it runs on,
                # offline): a new one brings its own, which the creates' may not outlive
                old, chaos.sandbox = chaos.sandbox, _create_and_exec()
                if old is not None:
                    old.terminate()
            sb = chaos.sandbox
            assert sb is not None
            threads = [
                chaos.call("long exec", lambda sb=sb: _exec(sb, 6)),  # (its zygote waits)
                chaos.call("create", lambda t=target: _create_and_exec(
                    zygote_may_die=t == "zygote").terminate()),
                chaos.call("exec", lambda sb=sb: _exec(sb)),
                chaos.call("file stream", lambda sb=sb, r=round: _file_stream(sb, f"f{r}")),
                chaos.call("build", _build),
            ]
            time.sleep(rng.uniform(0.0, 1.0))  # the random moment of the crash
            if target == "pause" and not chaos.find("pause"):
                # A pause process killed before stays dead while its daemon lives (the
                # daemon holds the namespace; the next daemon makes a new pause process).
                target = "daemon"
            pid = wait_for(lambda t=target: chaos.find(t), timeout=10,
                           what=f"a {target} to kill")
            killed = _sigkill(pid)
            print(f"round {round}: killed {target} {pid} ({killed})")
            _join(threads, f"round {round} ({target} killed)")
            assert not chaos.failures, (round, target, chaos.failures)
            _check_after_crash(chaos, round)
        print("\n".join(["errors the crashes caused (allowed):", *chaos.crash_errors]))
        # The volume kept what was written before the chaos.
        reader = hutch.Sandbox.create(volumes={"/mnt/v": volume}, timeout=60)
        try:
            assert reader.exec("cat", "/mnt/v/marker").stdout.read() == "kept\n"
        finally:
            reader.terminate()
    finally:
        # the reserve's waiting sandboxes end too (the engine's own: never listed)
        request_blocking("PUT", "/v1/engine/reserve", json_body={"size": 0})
        for sb in list(hutch.Sandbox.list()):
            sb.terminate(wait=True)
    ids = _sandbox_ids(data) - before
    assert ids, "no sandbox was made (a test of nothing)"
    try:
        wait_for(lambda: not _leftovers(data, ids), timeout=30,
                 what="the ended sandboxes to leave nothing behind")
    except AssertionError:
        raise AssertionError(f"left behind: {_leftovers(data, ids)}") from None
    hutch.Volume.delete(volume_name)
