"""Execs started by the sandbox's zygote (hutch.engine.commands.forkserver / zygote / commands).

The zygote replaces the runtime's exec on the hot path, so the first group of tests holds
it to what the runtime's exec gives: the same confinement as the sandbox's entrypoint
(namespaces, cgroup, capabilities, no_new_privs, seccomp), the same stdio, environment and
errors.  The same checks run once more against an engine told to use the runtime's exec
(``HUTCH_EXEC=runtime``), so the two paths cannot drift apart.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import signal
from pathlib import Path
from typing import Any

import hutch
from hutch.sdk.transport import request_blocking
from tests.helpers import engine_dirs, process_alive, stop_engine, wait_for

#: Fields of /proc/PID/status that say how a process is confined.
CONFINEMENT = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp",
               "Uid", "Gid")
NAMESPACES = ("mnt", "pid", "net", "ipc", "uts", "cgroup", "user")


def _status(sb: hutch.Sandbox, pid: str) -> dict[str, str]:
    p = sb.exec("cat", f"/proc/{pid}/status")
    text = p.stdout.read()
    assert p.wait() == 0
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k: fields[k].strip() for k in CONFINEMENT}


def _check_like_the_entrypoint(sb: hutch.Sandbox) -> None:
    # `cat /proc/self/status` describes the exec'd cat; pid 1 is the entrypoint.
    assert _status(sb, "self") == _status(sb, "1")
    links = " ".join(f"/proc/self/ns/{ns} /proc/1/ns/{ns}" for ns in NAMESPACES)
    p = sb.exec("sh", "-c", f"for f in {links}; do readlink $f; done")
    lines = p.stdout.read().split()
    assert p.wait() == 0 and len(lines) == 2 * len(NAMESPACES)
    for ns in range(len(NAMESPACES)):
        assert lines[2 * ns] == lines[2 * ns + 1], (NAMESPACES[ns], lines)
    p = sb.exec("sh", "-c", "cat /proc/self/cgroup; echo --; cat /proc/1/cgroup")
    mine, _, init = p.stdout.read().partition("--\n")
    assert mine == init
    p = sb.exec("sh", "-c", "umask; ls /proc/self/fd; echo $HOME; pwd")
    umask, *rest = p.stdout.read().split()
    assert (umask, rest) == ("0022", ["0", "1", "2", "3", "/root", "/"])


def _check_errors(sb: hutch.Sandbox, not_found: int = 127) -> None:
    """``not_found``: the runtime's exec reports every failure to start as 255."""
    p = sb.exec("no-such-command")
    assert p.wait() == not_found
    assert "no-such-command" in p.stderr.read()
    p = sb.exec("pwd", workdir="/no/such/dir")
    assert p.wait() == not_found
    assert "/no/such/dir" in p.stderr.read()


def test_the_engine_uses_zygotes_here(engine: dict[str, Any]) -> None:
    assert request_blocking("GET", "/v1/engine")["exec_via"] == "zygote"


def test_an_exec_is_confined_like_the_entrypoint(sandbox: hutch.Sandbox) -> None:
    _check_like_the_entrypoint(sandbox)


def test_commands_that_cannot_start(sandbox: hutch.Sandbox) -> None:
    _check_errors(sandbox)
    p = sandbox.exec("/etc/passwd")
    assert p.wait() == 126
    assert "/etc/passwd" in p.stderr.read()
    p = sandbox.exec("sh", "-c", "mkdir -p /tmp/bin && printf '#!/bin/sh\\necho hi\\n' > "
                     "/tmp/bin/greet && chmod +x /tmp/bin/greet")
    assert p.wait() == 0
    p = sandbox.exec("greet", env={"PATH": "/tmp/bin:/usr/bin:/bin"})
    assert (p.stdout.read(), p.wait()) == ("hi\n", 0)  # looked up in the exec's own PATH


def test_signals_are_not_inherited_ignored(sandbox: hutch.Sandbox) -> None:
    """The zygote is a Python process, which ignores SIGPIPE; its commands must not."""
    p = sandbox.exec("grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status")
    fields = dict(line.split(":\t") for line in p.stdout.read().splitlines())
    assert p.wait() == 0
    assert int(fields["SigBlk"], 16) == 0
    # posix_spawn(3) of glibc leaves its two internal signals (32 and 33) ignored; every
    # program glibc's posix_spawn starts has that, and libcs claim them when they need them
    assert int(fields["SigIgn"], 16) & ~(0b11 << 31) == 0


def test_many_execs_at_once(sandbox: hutch.Sandbox) -> None:
    def run(i: int) -> tuple[str, int]:
        p = sandbox.exec("sh", "-c", f"echo {i}; exit {i % 7}")
        return p.stdout.read(), p.wait()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(run, range(48)))
    assert results == [(f"{i}\n", i % 7) for i in range(48)]


def test_a_large_command_line(sandbox: hutch.Sandbox) -> None:
    big = "x" * 60_000
    p = sandbox.exec("sh", "-c", 'printf %s "$1$B$C" | wc -c', "sh", big,
                     env={"B": big, "C": big})
    assert (p.stdout.read().strip(), p.wait()) == ("180000", 0)


_SLEEPS = itertools.count(1)


def _sleep(sb: hutch.Sandbox, seconds: int) -> tuple[Any, str]:
    """An exec of ``sleep`` whose argument (``seconds`` and a unique fraction) names it
    among the host's processes; its command line is all the host may read of it (the
    sandbox's processes run under ids of their own)."""
    mark = f"{seconds}.{next(_SLEEPS):06d}1"
    return sb.exec("sleep", mark), mark


def _zygote_of(mark: str) -> tuple[int, int]:
    """(the pid of the ``sleep`` exec named ``mark``, its parent's: the zygote) as the host
    sees them."""
    wanted = f"sleep\0{mark}\0".encode()

    def find() -> int | None:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if (entry / "cmdline").read_bytes() == wanted:
                        return int(entry.name)
                except OSError:
                    continue
        return None

    pid = wait_for(find, what=f"the process sleep {mark}")
    assert pid is not None
    status = Path(f"/proc/{pid}/status").read_text()
    ppid = int(status.split("PPid:")[1].split()[0])
    return pid, ppid


def test_the_zygote_is_invisible_inside(sandbox: hutch.Sandbox) -> None:
    p, mark = _sleep(sandbox, 30)
    _, zygote = _zygote_of(mark)
    assert "forkserver" in Path(f"/proc/{zygote}/cmdline").read_text()
    q = sandbox.exec("sh", "-c", "for d in /proc/[0-9]*; do cat $d/comm; done")
    # the entrypoint, the sleep exec and this shell: no zygote (nor anything of the engine)
    assert sorted(q.stdout.read().split()) == ["sh", "sleep", "sleep"]
    p.kill()


def test_a_dead_zygote_ends_its_execs_and_is_replaced(sandbox: hutch.Sandbox) -> None:
    p, mark = _sleep(sandbox, 300)
    pid, zygote = _zygote_of(mark)
    os.kill(zygote, signal.SIGKILL)
    assert p.wait() == 137
    wait_for(lambda: not process_alive(pid), what="the orphaned exec to be killed")
    q = sandbox.exec("echo", "again")
    assert (q.stdout.read(), q.wait()) == ("again\n", 0)
    _, second = _zygote_of(_sleep(sandbox, 5)[1])
    assert second != zygote


def test_the_zygote_leaves_with_its_sandbox(engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create(timeout=60)
    _, mark = _sleep(sb, 300)
    _, zygote = _zygote_of(mark)
    sb.terminate()
    wait_for(lambda: not process_alive(zygote), timeout=10, what="the zygote to exit")


def _zygotes() -> set[int]:
    """The pids of the engine's zygotes (children of its fork server)."""
    def parent(pid: str) -> str:
        try:
            return Path(f"/proc/{pid}/status").read_text().split("PPid:")[1].split()[0]
        except (OSError, IndexError):
            return ""

    def fork_server(pid: str) -> bool:
        try:
            return b"forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False

    engine = str(request_blocking("GET", "/v1/engine")["pid"])
    pids = [p.name for p in Path("/proc").iterdir() if p.name.isdigit()]
    servers = {p for p in pids if parent(p) == engine and fork_server(p)}
    return {int(p) for p in pids if parent(p) in servers}


def test_an_idle_zygote_is_retired_but_a_pooled_one_kept(engine: dict[str, Any]) -> None:
    """Each zygote holds pages of its own: one with nothing to do leaves, and the next
    command makes a new one.  A sandbox waiting in a warm pool has its zygote made ahead
    and kept, so that its first exec starts at once."""
    stop_engine()
    with engine_dirs(Path(os.environ["HUTCH_RUNTIME_DIR"]), Path(os.environ["HUTCH_DATA_DIR"]),
                     HUTCH_ZYGOTE_IDLE="1"):
        try:
            app = hutch.App.lookup("zygote-pool", create_if_missing=True)
            pool = app.warm_pool(size=1)
            pool.wait_ready(timeout=60)
            pooled = _zygotes()
            assert len(pooled) == 1
            sb = hutch.Sandbox.create(timeout=120)
            p, mark = _sleep(sb, 3)
            _, zygote = _zygote_of(mark)
            assert p.wait() == 0  # busy for longer than the idle period: kept
            wait_for(lambda: not process_alive(zygote), timeout=10, what="the zygote to retire")
            q, mark = _sleep(sb, 2)
            _, second = _zygote_of(mark)
            assert second != zygote and q.wait() == 0
            assert pooled <= _zygotes()  # idle for as long, and still there
            taken = hutch.Sandbox.create(app=app, timeout=60)
            _, used = _zygote_of(_sleep(taken, 1)[1])
            assert {used} == pooled
            for s in (sb, taken):
                s.terminate()
            pool.delete()
        finally:
            stop_engine()


def test_the_runtime_exec_gives_the_same(engine: dict[str, Any]) -> None:
    stop_engine()
    with engine_dirs(Path(os.environ["HUTCH_RUNTIME_DIR"]), Path(os.environ["HUTCH_DATA_DIR"]),
                     HUTCH_EXEC="runtime"):
        try:
            assert request_blocking("GET", "/v1/engine")["exec_via"] == "runtime"
            sb = hutch.Sandbox.create(timeout=120)
            try:
                _check_like_the_entrypoint(sb)
                _check_errors(sb, not_found=255)
            finally:
                sb.terminate()
        finally:
            stop_engine()
    assert request_blocking("GET", "/v1/engine")["exec_via"] == "zygote"
