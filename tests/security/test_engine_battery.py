"""The hostile-sandbox battery: code in a sandbox against every process the engine runs,
and against a second sandbox (issue 15).

Written from the attacker's side.  Two sandboxes run on the session's engine: A (the
victim) serves a secret on a TCP port that is forwarded with TLS, on an abstract unix
socket, in ``/dev/shm``, ``/tmp``, its own volume and its environment; B (the attacker)
gets the host pids of every process the engine runs (daemon, which is also the TLS proxy,
pause process, fork server, zygotes, slirp4netns), of A's processes and of a marker
process of the host user, and tries to signal, trace and write the memory of each, to
reach every socket those processes hold (the engine's socket, slirp4netns's API sockets,
every listening port, every abstract socket), and to reach A by network, ``/proc``,
abstract sockets, shared files and signals.  Every attempt must be refused.

After each run the host is checked: the engine's processes and the marker still run (held
by pidfds opened before the attack, so a reused pid cannot pass), the engine's resident
memory and open files grew boundedly, and both sandboxes still run commands.
"""

from __future__ import annotations

import json
import os
import select
import socket
import ssl
import stat
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import hutch
from hutch.sdk.transport import request_blocking
from tests.helpers import children_of, cmdline_of, wait_for
from tests.security.test_network_host import targets as host_address_forms

#: Budget for the engine's growth over the whole battery (resident memory, open files).
RSS_GROWTH = 64 << 20
FD_GROWTH = 8

#: Helpers for the programs run in a sandbox; each attempt gives "ok" or an errno name.
PRELUDE = r"""
import ctypes, errno, json, os, signal, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
ARGS = json.loads(sys.argv[1])

def _name(code):
    return errno.errorcode.get(code, str(code))

def os_call(fn, *args):
    try:
        fn(*args)
    except OSError as e:
        return _name(e.errno)
    return "ok"

def own_pids():
    return {int(p) for p in os.listdir("/proc") if p.isdigit()}
"""

#: Every way a sandbox process can act on another process, tried on each host pid given.
#: The signal is sent last (SIGKILL: the real attack), after the reads of ``/proc``.
PROCESS_ATTACK = PRELUDE + r"""
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
buf = ctypes.create_string_buffer(8)
local = iovec(ctypes.cast(buf, ctypes.c_void_p), 8)
remote = iovec(0x10000, 8)  # unmapped: a write that passed the checks fails with EFAULT

def sys_call(*args):
    ctypes.set_errno(0)
    r = libc.syscall(*[ctypes.c_long(a) for a in args])
    if r >= 0 and args[0] == 434:  # pidfd_open gave a descriptor
        os.close(r)
    return _name(ctypes.get_errno()) if r == -1 else "ok"

def open_rw(path):
    os.close(os.open(path, os.O_RDWR))

def vm_writev(pid):
    ctypes.set_errno(0)
    r = libc.process_vm_writev(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    return "ok" if r >= 0 else _name(ctypes.get_errno())

def ptrace_seize(pid):
    ctypes.set_errno(0)
    if libc.ptrace(0x4206, pid, 0, 0) == 0:  # PTRACE_SEIZE
        libc.ptrace(0x11, pid, 0, 0)  # PTRACE_DETACH
        return "ok"
    return _name(ctypes.get_errno())

own = own_pids()
out = {}
for what, pid in ARGS["pids"].items():
    if pid in own:  # the same number names a process of this sandbox: not the target
        out[what] = "own pid"
        continue
    out[what] = {
        "proc": os.path.exists(f"/proc/{pid}"),
        "mem": os_call(open_rw, f"/proc/{pid}/mem"),
        "vm_writev": vm_writev(pid),
        "ptrace_seize": ptrace_seize(pid),
        "ptrace_attach": sys_call(NR_PTRACE, 16, pid, 0, 0),
        "pidfd_open": sys_call(434, pid, 0),
        "kill": os_call(os.kill, pid, signal.SIGKILL),
    }
print(json.dumps(out))
""".replace("NR_PTRACE", {"x86_64": "101", "aarch64": "117"}.get(os.uname().machine, "-1"))

#: Every pid 1..pid_max tried with signal 0: only this sandbox's own processes answer.
PID_SWEEP = PRELUDE + r"""
pid_max = int(open("/proc/sys/kernel/pid_max").read())
before = own_pids()
answered = [pid for pid in range(1, pid_max + 1) if os_call(os.kill, pid, 0) == "ok"]
after = own_pids()
print(json.dumps({"pid_max": pid_max, "answered": answered,
                  "not_own": [p for p in answered if p not in before | after]}))
"""

#: Unix socket paths, abstract names and TCP addresses: each must be refused.
SOCKET_ATTACK = PRELUDE + r"""
def unix(address):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(address)
        return "open"
    except OSError as e:
        return _name(e.errno) if e.errno else type(e).__name__
    finally:
        s.close()

def tcp(host, port):
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError as e:
        return "no address: " + str(e)
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(address)
        s.settimeout(1)
        try:
            return "open: " + s.recv(200).decode(errors="replace")
        except OSError:
            return "open"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return _name(e.errno)
    finally:
        s.close()

own_abstract = [line.split()[-1][1:] for line in open("/proc/net/unix").read().splitlines()[1:]
                if line.split()[-1].startswith("@")]
print(json.dumps({
    "paths": {p: [os.path.exists(p), unix(p)] for p in ARGS["paths"]},
    "abstract": {n: unix("\0" + n) for n in ARGS["abstract"]},
    "own_abstract": own_abstract,
    "tcp": {f"{h} {p}": tcp(h, p) for h, p in ARGS["tcp"]},
}))
"""

#: Sandbox A's secret holder: a TCP and an abstract-socket server that hand out the token,
#: files in /dev/shm, /tmp and A's volume.  argv: token.
VICTIM = r"""
import os, socket, sys, threading
token = sys.argv[1]
for d in ("/dev/shm", "/tmp", "/mnt/va"):
    with open(f"{d}/{token}", "w") as f:
        f.write(token)
tcp = socket.socket()
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("0.0.0.0", 8000))
tcp.listen(16)
ab = socket.socket(socket.AF_UNIX)
ab.bind("\0hutch-battery-" + token)
ab.listen(16)

def serve(s):
    while True:
        c, _ = s.accept()
        c.sendall(token.encode())
        c.close()

threading.Thread(target=serve, args=(ab,), daemon=True).start()
print("serving", flush=True)
serve(tcp)
"""

#: B looking for A's token everywhere a sandbox could share something.  argv: token, pids.
SNOOP = PRELUDE + r"""
token = ARGS["token"]
seen = {}
for entry in os.listdir("/proc"):
    if entry.isdigit() and int(entry) != os.getpid():  # (its own argv holds the token)
        for part in ("cmdline", "environ"):
            try:
                if token.encode() in open(f"/proc/{entry}/{part}", "rb").read():
                    seen[f"/proc/{entry}/{part}"] = True
            except OSError:
                pass
for d in ("/dev/shm", "/tmp", "/mnt/vb", "/"):
    if token in os.listdir(d):
        seen[d] = True
if token in open("/proc/net/unix").read():
    seen["/proc/net/unix"] = True
s = socket.socket(socket.AF_UNIX)
abstract = os_call(s.connect, "\0hutch-battery-" + token)
print(json.dumps({"seen": seen, "abstract": abstract, "va": os.path.exists("/mnt/va"),
                  "kill": {str(p): os_call(os.kill, p, signal.SIGKILL) for p in ARGS["pids"]
                           if p not in own_pids()}}))
"""


def _python(sb: hutch.Sandbox, program: str, args: Any, timeout: int = 120) -> Any:
    p = sb.exec("python3", "-c", program, json.dumps(args), timeout=timeout)
    out, err = p.stdout.read(), p.stderr.read()
    assert p.wait() == 0, err
    return json.loads(out)




def _host_pid_with(text: bytes) -> int:
    for entry in os.listdir("/proc"):
        if entry.isdigit() and text in cmdline_of(int(entry)):
            return int(entry)
    return 0


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) << 10
    raise AssertionError(f"no VmRSS for {pid}")


def _open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _ended(pidfd: int) -> bool:
    return bool(select.select([pidfd], [], [], 0)[0])


@dataclass
class World:
    """The two sandboxes, what A hides, and the host's side of the battery."""

    engine: dict[str, Any]
    a: hutch.Sandbox
    b: hutch.Sandbox
    token: str
    victim: Any  # A's server (a ContainerProcess)
    tunnel_port: int
    marker: Any  # a process of the host user (subprocess.Popen)
    host_abstract: str  # an abstract unix socket of the host user
    reached_host_abstract: list[bytes] = field(default_factory=list)
    rss: int = 0
    files: int = 0

    @property
    def daemon(self) -> int:
        pid: int = request_blocking("GET", "/v1/engine")["pid"]
        return pid

    def sandbox_dir(self, sb: hutch.Sandbox) -> Path:
        return Path(self.engine["data_dir"]) / "sandboxes" / sb.object_id

    def engine_processes(self) -> dict[str, int]:
        """Host pids of every process the engine runs for itself (not in a sandbox)."""
        runtime = Path(os.environ["HUTCH_RUNTIME_DIR"])
        daemon = self.daemon
        found = {"daemon (TLS proxy)": daemon,
                 "pause": int((runtime / "pause.pid").read_text())}
        for child in children_of(daemon):
            cmd = cmdline_of(child)
            if b"forkserver" in cmd:
                found[f"fork server {child}"] = child
                for zygote in children_of(child):
                    found[f"zygote {zygote}"] = zygote
            elif b"slirp4netns" in cmd:
                found[f"slirp4netns {child}"] = child
        return found

    def victim_processes(self) -> dict[str, int]:
        init = int((self.sandbox_dir(self.a) / "init.pid").read_text())
        return {"A's init": init, "A's server": _host_pid_with(self.token.encode())}


@pytest.fixture(scope="module")
def world(engine: dict[str, Any]) -> Iterator[World]:
    import subprocess

    token = f"tok{uuid.uuid4().hex}"
    marker = subprocess.Popen(["sleep", "3600"])
    host_abstract = f"hutch-battery-host-{token}"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind("\0" + host_abstract)
    listener.listen(16)
    reached: list[bytes] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            reached.append(b"x")
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    with hutch.Volume.ephemeral() as va, hutch.Volume.ephemeral() as vb:
        a = hutch.Sandbox.create(timeout=600, encrypted_ports=[8000], volumes={"/mnt/va": va},
                                 secrets=[hutch.Secret.from_dict({"BATTERY_SECRET": token})])
        b = hutch.Sandbox.create(timeout=600, volumes={"/mnt/vb": vb})
        try:
            victim = a.exec("python3", "-c", VICTIM, token)
            for chunk in victim.stdout:  # (it serves once its first output arrives)
                assert chunk.startswith("serving"), chunk
                break
            w = World(engine, a, b, token, victim, a.tunnels()[8000].port, marker,
                      host_abstract, reached)
            assert b.exec("true").wait() == 0  # B's zygote runs from here on
            w.rss, w.files = _rss(w.daemon), _open_files(w.daemon)
            yield w
        finally:
            a.terminate()
            b.terminate()
            marker.kill()
            marker.wait()
            listener.close()


def _pidfds(pids: dict[str, int]) -> dict[str, int]:
    return {name: os.pidfd_open(pid) for name, pid in pids.items()}


def _aftermath(w: World, alive: dict[str, int]) -> None:
    """The host after an attack: ``alive`` (pidfds) still run, the engine is bounded and
    both sandboxes work."""
    try:
        for name, pidfd in alive.items():
            assert not _ended(pidfd), f"{name} was ended by the attack"
    finally:
        for pidfd in alive.values():
            os.close(pidfd)
    assert w.marker.poll() is None, "the host user's marker process was ended"
    assert w.victim.poll() is None, "A's server was ended"
    assert not w.reached_host_abstract, "a sandbox reached the host's abstract socket"
    for sb in (w.a, w.b):
        p = sb.exec("echo", "alive")
        assert p.stdout.read() == "alive\n" and p.wait() == 0
    daemon = w.daemon
    assert _rss(daemon) - w.rss < RSS_GROWTH, f"engine grew {(_rss(daemon) - w.rss) >> 20} MiB"
    wait_for(lambda: _open_files(daemon) <= w.files + FD_GROWTH, timeout=20,
             what=f"the engine's open files ({_open_files(daemon)}) to come back near "
                  f"{w.files}")


def _assert_refused(results: dict[str, Any]) -> None:
    for what, r in results.items():
        assert r != "own pid", f"{what}: its host pid is a pid of the attacker's sandbox"
        assert r["proc"] is False, (what, r)
        for attempt in ("mem", "vm_writev", "ptrace_seize", "ptrace_attach", "pidfd_open",
                        "kill"):
            # EFAULT: a write that passed the permission checks (and hit no memory)
            assert r[attempt] not in ("ok", "EFAULT"), (what, attempt, r)


def test_engine_processes_refuse_signals_traces_and_memory_writes(world: World) -> None:
    """From B and from A: SIGKILL, ptrace, /proc/PID/mem, process_vm_writev and
    pidfd_open on the host pid of every engine process, of the host user's marker and
    (from B) of A's processes."""
    engine = world.engine_processes()
    assert any(n.startswith("zygote") for n in engine) or world.engine["exec_via"] != "zygote"
    assert sum(n.startswith("slirp4netns") for n in engine) >= 2, engine
    host = {"host marker": world.marker.pid}
    alive = _pidfds({**engine, **host, **world.victim_processes()})
    from_b = _python(world.b, PROCESS_ATTACK, {"pids": {**engine, **host,
                                                        **world.victim_processes()}})
    from_a = _python(world.a, PROCESS_ATTACK, {"pids": {**engine, **host}})
    _aftermath(world, alive)
    _assert_refused(from_b)
    _assert_refused(from_a)


def test_a_pid_sweep_and_kill_all_reach_only_the_sandboxs_own_processes(
        world: World) -> None:
    """Signal 0 to every pid 1..pid_max answers only for B's own processes; then
    ``kill(-1, SIGKILL)`` in B ends B's other processes (it works) and nothing else."""
    alive = _pidfds({**world.engine_processes(), "host marker": world.marker.pid,
                     **world.victim_processes()})
    doomed = world.b.exec("sleep", "1000")
    sweep = _python(world.b, PID_SWEEP, {})
    # (the sandbox's own limit: pid_max is per pid namespace on recent kernels)
    assert sweep["pid_max"] >= int(Path("/proc/sys/kernel/pid_max").read_text())
    assert sweep["not_own"] == [], sweep
    assert 1 in sweep["answered"]
    assert len(sweep["answered"]) < 20, sweep  # a few of B's own, not the host's
    killer = world.b.exec("python3", "-c", "import os; os.kill(-1, 9)")
    assert killer.wait() == 0
    assert doomed.wait() != 0, "kill(-1) did not even reach B's own processes (blind)"
    _aftermath(world, alive)


def _listening(pids: list[int]) -> tuple[set[str], set[int]]:
    """The unix socket names (paths and @abstract) and TCP ports bound by ``pids``."""
    inodes = set()
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    names = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[6] in inodes:
            names.add(fields[7])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return names, ports


def _forward_ports(tunnels: dict[str, dict[str, Any]]) -> set[int]:
    """Every host port the engine keeps for A's forwarded port (TLS listener, and any
    plain forward of slirp4netns behind it)."""
    return {v for t in tunnels.values() for k, v in t.items() if k.endswith("port")}


def test_engine_sockets_are_out_of_reach(world: World) -> None:
    """The engine's socket, slirp4netns's API sockets, every unix socket and listening
    port of an engine process (the TLS proxy's port among them), and the host user's
    abstract sockets: none connects from a sandbox, in any form of the host's address."""
    engine = world.engine_processes()
    names, ports = _listening(list(engine.values()))
    runtime = Path(os.environ["HUTCH_RUNTIME_DIR"])
    paths = {str(runtime / "engine.sock")}
    paths |= {str(world.sandbox_dir(sb) / "slirp4netns.sock") for sb in (world.a, world.b)}
    paths |= {n for n in names if not n.startswith("@")}
    for path in paths:  # they exist (a test of nothing otherwise)
        assert stat.S_ISSOCK(os.stat(path).st_mode), path
    host_abstract = [line.split()[-1][1:] for line in
                     Path("/proc/net/unix").read_text().splitlines()[1:]
                     if line.split()[-1].startswith("@")]
    assert world.host_abstract in host_abstract
    tunnels = json.loads((world.sandbox_dir(world.a) / "tunnels.json").read_text())
    ports |= {world.tunnel_port, *_forward_ports(tunnels)}
    assert world.tunnel_port in ports
    # The host itself reaches the TLS proxy and, through it, A's server.
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", world.tunnel_port), timeout=10) as raw, \
            context.wrap_socket(raw) as tls:
        assert tls.recv(200) == world.token.encode()
    forms = ["127.0.0.1", "::1", *host_address_forms()]
    tcp = [(host, port) for port in sorted(ports) for host in forms]
    alive = _pidfds(engine)
    for sb in (world.b, world.a):
        out = _python(sb, SOCKET_ATTACK, {"paths": sorted(paths), "abstract": host_abstract,
                                          "tcp": tcp}, timeout=300)
        for path, (exists, result) in out["paths"].items():
            assert not exists and result != "open", (path, result)
        for name, result in out["abstract"].items():
            assert result != "open", (name, result)
        assert not set(out["own_abstract"]) & set(host_abstract)
        for target, result in out["tcp"].items():
            if target in _mirrors(world):  # by design: see below
                continue
            assert not result.startswith("open"), (target, result)
        _only_the_tunnel(world, out["tcp"])
    _aftermath(world, alive)


def _mirrors(world: World) -> set[str]:
    """A's tunnel port on a sandbox's own loopback (IPv4-mapped is the same socket)."""
    return {f"{host} {world.tunnel_port}" for host in ("127.0.0.1", "::ffff:127.0.0.1")}


def _only_the_tunnel(world: World, tcp: dict[str, str]) -> None:
    """The one way from a sandbox to the engine's listeners: A's tunnel port on the
    sandbox's own 127.0.0.1, there by design (a tunnel URL works in the user's other
    sandboxes, as Modal's public URLs do), leading to A's tunnel as on the host: TLS, so
    a plain-text read gets no byte of A's server."""
    for target in _mirrors(world):
        assert tcp[target].startswith("open") and world.token not in tcp[target], target


def test_a_second_sandbox_cannot_reach_the_first(world: World) -> None:
    """B against A: A's port (on B's own address, slirp's host alias, every host form of
    the forwarded ports; only A's tunnel answers, on B's loopback, in TLS), A's processes
    in /proc (command line, secret environment), A's abstract socket, A's files in
    /dev/shm, /tmp and A's volume, and signals to A's host pids."""
    victims = world.victim_processes()
    assert all(victims.values()), victims
    # A itself reaches its own abstract socket and port (the secret is there to find).
    own = world.a.exec("python3", "-c", "import socket,sys\n"
                       "s = socket.socket(socket.AF_UNIX); s.connect('\\0' + sys.argv[1])\n"
                       "t = socket.create_connection(('127.0.0.1', 8000))\n"
                       "print(s.recv(100).decode(), t.recv(100).decode())",
                       "hutch-battery-" + world.token)
    assert own.stdout.read().split() == [world.token] * 2
    alive = _pidfds({**world.engine_processes(), **victims})
    tunnels = json.loads((world.sandbox_dir(world.a) / "tunnels.json").read_text())
    ports = sorted({8000, world.tunnel_port, *_forward_ports(tunnels)})
    forms = ["10.0.2.100", "127.0.0.1", *host_address_forms()]
    out = _python(world.b, SOCKET_ATTACK, {"paths": [], "abstract": [
        "hutch-battery-" + world.token], "tcp": [(h, p) for p in ports for h in forms]},
        timeout=300)
    assert out["abstract"] == {"hutch-battery-" + world.token: "ECONNREFUSED"}
    for target, result in out["tcp"].items():
        assert world.token not in result, (target, result)
        if target not in _mirrors(world):
            assert not result.startswith("open"), (target, result)
    _only_the_tunnel(world, out["tcp"])
    snoop = _python(world.b, SNOOP, {"token": world.token, "pids": list(victims.values())})
    assert snoop["seen"] == {}, snoop
    assert snoop["abstract"] == "ECONNREFUSED"
    assert snoop["va"] is False
    assert all(r not in ("ok", "EPERM") for r in snoop["kill"].values()), snoop
    # A's volume kept what A wrote, and B's volume holds nothing of A.
    assert world.a.exec("cat", f"/mnt/va/{world.token}").stdout.read() == world.token
    _aftermath(world, alive)
    fresh = hutch.Sandbox.create(timeout=60)
    try:
        assert fresh.exec("echo", "fresh").stdout.read() == "fresh\n"
    finally:
        fresh.terminate()
