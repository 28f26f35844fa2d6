"""Helpers for tests that drive a real engine: isolated state dirs and deadline waits."""

from __future__ import annotations

import itertools
import os
import pwd
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from hutch.sdk import transport

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float = 20.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def hutch_cli(*args: str, input: bytes | None = None, timeout: float = 120
              ) -> subprocess.CompletedProcess[bytes]:
    """Run the ``hutch`` command (``python -m hutch``) with the test engine's environment."""
    return subprocess.run([sys.executable, "-m", "hutch", *args], input=input,
                          capture_output=True, timeout=timeout, env=os.environ.copy())


def reset_client() -> None:
    """Forget the SDK's cached connection (after changing the engine's dirs)."""
    transport.forget_clients()


@contextmanager
def engine_dirs(runtime: Path, data: Path, **extra_env: str) -> Iterator[None]:
    """Point the SDK (and engines it starts) at ``runtime``/``data`` for the block."""
    keys = ["HUTCH_RUNTIME_DIR", "HUTCH_DATA_DIR", *extra_env]
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({"HUTCH_RUNTIME_DIR": str(runtime), "HUTCH_DATA_DIR": str(data),
                       **extra_env})
    reset_client()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reset_client()


def stop_engine() -> None:
    result = hutch_cli("engine", "stop")
    assert result.returncode == 0, result.stderr.decode()
    reset_client()


def mark_tests_under(items: list[pytest.Item], directory: Path, marker: str) -> None:
    """Add ``marker`` to every collected test that lives under ``directory``."""
    for item in items:
        if directory in Path(str(item.fspath)).parents:
            item.add_marker(getattr(pytest.mark, marker))


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_daemon() -> int:
    """SIGKILL the engine daemon (its pause process stays); returns the dead daemon's pid."""
    from hutch.sdk.transport import request_blocking

    pid: int = request_blocking("GET", "/v1/engine")["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not process_alive(pid), what="the daemon to die")
    reset_client()
    return pid


def user_cgroups() -> tuple[Any, Any]:
    """This user's delegated cgroups (as the engine would find them), and a skip marker
    for tests that need all of memory, cpu and pids delegated."""
    from hutch.engine.isolation import cgroups

    found = cgroups.detect(pwd.getpwuid(os.getuid()).pw_name, root=False, probe=True)
    marker = pytest.mark.skipif(set(found.bases) != set(cgroups.CONTROLLERS),
                                reason=f"cgroup limits are not delegated here: "
                                       f"{found.problem}")
    return found, marker


#: Spins for 1.5 s and prints the share of a core it got (a CPU limit's test).
SPIN = """
import time
wall, cpu = time.monotonic(), time.process_time()
while time.monotonic() - wall < 1.5:
    pass
print(round((time.process_time() - cpu) / (time.monotonic() - wall), 3))
"""


def cgroup_file(cgroups: Any, sandbox_id: str, controller: str, name: str) -> str:
    """A control file of a sandbox's cgroup under ``cgroups`` (from :func:`user_cgroups`)."""
    return (Path(cgroups.bases[controller]) / sandbox_id / name).read_text().strip()


def cmdline_of(pid: int) -> bytes:
    """``/proc/PID/cmdline`` (NUL-separated), or b"" once the process is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def children_of(pid: int) -> list[int]:
    """The host pids whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(b")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def _last_pid() -> int:
    return int(Path("/proc/sys/kernel/ns_last_pid").read_text())


def _burn_pids(count: int) -> None:
    """Use up ``count`` pids (threads take them from the same counter as processes, and
    start in ~60 us: a whole cycle of pid_max 32768 in ~2 s)."""
    for _ in range(count):
        t = threading.Thread(target=int)
        t.start()
        t.join()


def _pids_in_use() -> set[int]:
    """Every pid taken now, threads' included (the counter skips them all)."""
    used: set[int] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                used.update(int(t) for t in os.listdir(f"/proc/{entry}/task"))
            except OSError:
                pass
    return used


def _free_pids_before(target: int, last: int, pid_max: int) -> int:
    """How many pids the kernel hands out after ``last`` before it comes to ``target``
    (after pid_max it goes on from RESERVED_PIDS, 300; pids in use are skipped)."""
    between = range(last + 1, target) if target > last else \
        itertools.chain(range(last + 1, pid_max), range(300, target))
    used = _pids_in_use()
    return sum(1 for p in between if p not in used)


def process_with_pid(target: int, argv: list[str], timeout: float = 60, **popen: Any
                     ) -> subprocess.Popen[bytes]:
    """Start ``argv`` (``popen``: more arguments for :class:`subprocess.Popen`) as a
    process whose pid is ``target`` (free now), as the kernel's pid counter comes round to
    it: what happens by itself on a busy host, to a pid the engine may still hold."""
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        distance = _free_pids_before(target, _last_pid(), pid_max)
        if distance > 40:
            _burn_pids(min(distance - 20, 4000))
        elif distance > 0:
            _burn_pids(1)
        else:
            proc: subprocess.Popen[bytes] = subprocess.Popen(argv, **popen)
            if proc.pid == target:
                return proc
            proc.kill()
            proc.wait()
    raise AssertionError(f"pid {target} did not come round within {timeout} s")


def image_output(image: Any, script: str, timeout: float = 120) -> str:
    """What ``sh -c script`` prints in a new sandbox of ``image`` (which must succeed)."""
    import hutch

    sb = hutch.Sandbox.create("sleep", "300", image=image, timeout=300)
    try:
        proc = sb.exec("sh", "-c", script, timeout=timeout)
        out = proc.stdout.read()
        assert proc.wait() == 0, (script, out, proc.stderr.read())
        return str(out)
    finally:
        sb.terminate()


#: An HTTP server on port 8000 of every address that answers with the sandbox's hostname
#: (its id): what the private-network tests reach peers with.
SERVE_HOSTNAME = "import http.server, socket\n" \
    "class H(http.server.BaseHTTPRequestHandler):\n" \
    "    def do_GET(self):\n" \
    "        body = socket.gethostname().encode()\n" \
    "        self.send_response(200); self.end_headers(); self.wfile.write(body)\n" \
    "http.server.HTTPServer(('0.0.0.0', 8000), H).serve_forever()\n"


@contextmanager
def private_network(prefix: str) -> Iterator[Any]:
    """A ``hutch.Network`` of the test's own; afterwards its members are terminated and,
    once they have left, it is deleted."""
    import uuid

    import hutch

    net = hutch.Network.create(f"{prefix}-{uuid.uuid4().hex[:12]}")
    try:
        yield net
    finally:
        for member in net.members():
            hutch.Sandbox.from_id(member.sandbox_id).terminate()
        wait_for(lambda: not net.members(), what="the network's members leaving")
        hutch.Network.delete(net.name)
