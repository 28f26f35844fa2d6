"""Escape attempts from inside a sandbox: each must fail, for the reason we expect.

Every attempt is made for real by a program in a sandbox of the session's engine.  Where
the unprivileged host user would *not* be refused (a keyring lookup, a user namespace, an
AF_VSOCK socket...), the same call is also made on the host, so a test shows that the
sandbox's defaults refuse it rather than the host's kernel settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hutch
from hutch.sdk.transport import request_blocking

# Syscall numbers by machine (arch/x86/entry/syscalls/syscall_64.tbl, asm-generic/unistd.h).
SYSCALLS = {
    "x86_64": {
        "init_module": 175, "finit_module": 313, "delete_module": 176, "kexec_load": 246,
        "keyctl": 250, "request_key": 249, "bpf": 321, "perf_event_open": 298,
        "userfaultfd": 323, "clock_settime": 227, "settimeofday": 164, "clone": 56,
        "clone3": 435, "unshare": 272, "setns": 308, "ptrace": 101, "io_uring_setup": 425,
        "open_by_handle_at": 304, "name_to_handle_at": 303, "fsopen": 430, "open_tree": 428,
        "socket": 41, "personality": 135, "syslog": 103,
    },
    "aarch64": {
        "init_module": 105, "finit_module": 273, "delete_module": 106, "kexec_load": 104,
        "keyctl": 219, "request_key": 218, "bpf": 280, "perf_event_open": 241,
        "userfaultfd": 282, "clock_settime": 112, "settimeofday": 170, "clone": 220,
        "clone3": 435, "unshare": 97, "setns": 268, "ptrace": 117, "io_uring_setup": 425,
        "open_by_handle_at": 265, "name_to_handle_at": 264, "fsopen": 430, "open_tree": 428,
        "socket": 198, "personality": 92, "syslog": 116,
    },
}
MACHINE = os.uname().machine
pytestmark = pytest.mark.skipif(MACHINE not in SYSCALLS, reason=f"no syscall table for {MACHINE}")
NR = SYSCALLS.get(MACHINE, {})

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
CLONE_FILES, SIGCHLD = 0x400, 17

_io_uring_sysctl = Path("/proc/sys/kernel/io_uring_disabled")
IO_URING_DISABLED = _io_uring_sysctl.is_file() and _io_uring_sysctl.read_text().strip() != "0"

#: Helpers for the programs run in a sandbox (and on the host): each attempt prints "ok"
#: or the errno's name.
PRELUDE = r"""
import ctypes, errno, json, os, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = json.loads(sys.argv[1])

def _name(code):
    return errno.errorcode.get(code, str(code))

def call(name, *args):
    conv = [ctypes.c_char_p(a) if isinstance(a, bytes) else
            a if isinstance(a, ctypes.Array) else ctypes.c_long(a) for a in args]
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(NR[name]), *conv)
    return _name(ctypes.get_errno()) if r == -1 else "ok"

def fork_call(name, *args):
    # clone-like calls: a child that comes to life leaves at once
    r = libc.syscall(ctypes.c_long(NR[name]), *[ctypes.c_long(a) for a in args])
    if r == 0:
        os._exit(0)
    if r > 0:
        os.waitpid(r, 0)
        return "ok"
    return _name(ctypes.get_errno())

def os_call(fn, *args):
    try:
        fn(*args)
    except OSError as e:
        return _name(e.errno)
    return "ok"

def now():
    return (ctypes.c_long * 2)(int(time.time()), 0)
"""


def _python(sb: hutch.Sandbox, code: str, timeout: int = 60) -> str:
    """Run ``code`` (after the prelude) with python3 in ``sb``; its stdout."""
    p = sb.exec("python3", "-c", PRELUDE + code, json.dumps(NR), timeout=timeout)
    out, err = p.stdout.read(), p.stderr.read()
    assert p.wait() == 0, err
    return str(out).strip()


def _host_python(code: str) -> str:
    """The same on the host, as the unprivileged user running the tests."""
    done = subprocess.run([sys.executable, "-c", PRELUDE + code, json.dumps(NR)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _sh(sb: hutch.Sandbox, script: str, timeout: int = 60) -> tuple[int, str, str]:
    p = sb.exec("sh", "-c", script, timeout=timeout)
    out, err = p.stdout.read(), p.stderr.read()
    return p.wait(), str(out), str(err)


@pytest.fixture
def host_marker(engine: dict[str, Any]) -> Iterator[Path]:
    """A file on the host, in the engine's own data directory."""
    path = Path(engine["data_dir"]) / f"escape-marker-{uuid.uuid4().hex}"
    path.write_text("host\n")
    yield path
    path.unlink()


def test_the_filter_and_no_new_privs_are_on(sandbox: hutch.Sandbox) -> None:
    for pid in ("self", "1"):  # an exec and the entrypoint
        code, out, _ = _sh(sandbox, f"grep -E '^(Seccomp|NoNewPrivs):' /proc/{pid}/status")
        assert code == 0
        fields = dict(line.split(":\t") for line in out.splitlines())
        assert fields == {"Seccomp": "2", "NoNewPrivs": "1"}, pid  # 2: a filter


# name: (attempt, errno in the sandbox, whether the host user may be refused too)
ATTEMPTS: dict[str, tuple[str, str, bool]] = {
    "keyctl": ("call('keyctl', 0, -4, 1)", "EPERM", False),  # KEYCTL_GET_KEYRING_ID
    "request_key": ("call('request_key', b'user', b'hutch-none', 0, 0)", "EPERM", False),
    "bpf": ("call('bpf', 0, 0, 0)", "EPERM", True),  # BPF_MAP_CREATE
    "perf_event_open": ("call('perf_event_open', 0, 0, -1, -1, 0)", "EPERM", False),
    # UFFD_USER_MODE_ONLY: allowed to unprivileged users by the kernel
    "userfaultfd": ("call('userfaultfd', 1)", "EPERM", False),
    "io_uring_setup": ("call('io_uring_setup', 1, 0)", "EPERM", IO_URING_DISABLED),
    "init_module": ("call('init_module', 0, 0, b'')", "EPERM", True),
    "finit_module": ("call('finit_module', os.open('/dev/null', os.O_RDONLY), b'', 0)",
                     "EPERM", True),
    "delete_module": ("call('delete_module', b'ext4', os.O_NONBLOCK)", "EPERM", True),
    "kexec_load": ("call('kexec_load', 0, 0, 0, 0)", "EPERM", True),
    "clock_settime": ("call('clock_settime', 0, now())", "EPERM", True),
    "settimeofday": ("call('settimeofday', now(), 0)", "EPERM", True),
    "syslog": ("call('syslog', 10, 0, 0)", "EPERM", True),  # SYSLOG_ACTION_SIZE_BUFFER
    "name_to_handle_at": ("call('name_to_handle_at', -100, b'/', 0, 0, 0)", "EPERM", False),
    "open_by_handle_at": ("call('open_by_handle_at', -100, 0, 0)", "EPERM", True),
    "fsopen": ("call('fsopen', b'tmpfs', 0)", "EPERM", True),
    "open_tree": ("call('open_tree', -100, b'/', 1)", "EPERM", True),  # OPEN_TREE_CLONE
    "socket_vsock": ("call('socket', 40, 1, 0)", "EPERM", False),  # AF_VSOCK
    "personality_no_aslr": ("call('personality', 0x40000)", "ENOSYS", False),
    # clone3's flags are out of seccomp's sight: "not implemented", libc uses clone
    "clone3": ("call('clone3', 0, 0)", "ENOSYS", False),
}


@pytest.mark.parametrize("name", sorted(ATTEMPTS))
def test_refused_syscalls(sandbox: hutch.Sandbox, name: str) -> None:
    attempt, expected, host_may_refuse = ATTEMPTS[name]
    assert _python(sandbox, f"print({attempt})") == expected
    if not host_may_refuse:
        assert _host_python(f"print({attempt})") != expected


def test_ordinary_calls_still_work(sandbox: hutch.Sandbox) -> None:
    """The controls for the attempts above: the same families of calls, harmless use."""
    out = _python(sandbox, """
import threading, subprocess
t = threading.Thread(target=lambda: None); t.start(); t.join()
print(call('personality', 0xffffffff), call('unshare', 0x400),
      os_call(socket.socket, socket.AF_INET, socket.SOCK_STREAM),
      os_call(time.clock_gettime, time.CLOCK_REALTIME),
      subprocess.run(['true']).returncode, fork_call('clone', 17, 0, 0, 0, 0))
""")
    assert out == "ok ok ok ok 0 ok"


@pytest.mark.parametrize("fstype,source,flags", [
    ("tmpfs", "tmpfs", 0), ("proc", "proc", 0), (None, "/etc", 0x1000),  # MS_BIND
])
def test_mount_fails(sandbox: hutch.Sandbox, fstype: str | None, source: str,
                     flags: int) -> None:
    kind = repr(fstype.encode()) if fstype else "None"
    out = _python(sandbox, f"""
print('ok' if libc.mount({source.encode()!r}, b'/mnt', {kind}, {flags}, None) == 0
      else _name(ctypes.get_errno()))
print(open('/proc/self/mountinfo').read().count(' /mnt '))
""")
    assert out.split() == ["EPERM", "0"]
    cli = {"tmpfs": "mount -t tmpfs tmpfs /mnt", "proc": "mount -t proc proc /mnt",
           None: "mount --bind /etc /mnt"}[fstype]
    code, _, err = _sh(sandbox, cli)
    assert code != 0 and "permission denied" in err.lower()


@pytest.mark.parametrize("flag", ["-U", "-m", "-n", "-Ur"])
def test_unshare_command_fails(sandbox: hutch.Sandbox, flag: str) -> None:
    code, _, err = _sh(sandbox, f"unshare {flag} true")
    assert code != 0
    assert "unshare failed: Operation not permitted" in err


def test_host_user_could_unshare_a_user_namespace() -> None:
    """The control for the above: the engine's own host allows user namespaces."""
    assert subprocess.run(["unshare", "-U", "true"], timeout=30).returncode == 0


@pytest.mark.parametrize("flags", [CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET,
                                   CLONE_NEWUSER | CLONE_NEWNS | CLONE_FILES])
def test_new_namespaces_through_syscalls_fail(sandbox: hutch.Sandbox, flags: int) -> None:
    out = _python(sandbox, f"print(call('unshare', {flags}), "
                           f"fork_call('clone', {flags | SIGCHLD}, 0, 0, 0, 0))")
    assert out == "EPERM EPERM"
    if flags & CLONE_NEWUSER:  # an unprivileged host user may do this
        assert _host_python(f"print(fork_call('clone', {flags | SIGCHLD}, 0, 0, 0, 0))") == "ok"


def test_setns_fails(sandbox: hutch.Sandbox) -> None:
    out = _python(sandbox, "print(call('setns', os.open('/proc/1/ns/net', os.O_RDONLY), 0), "
                           "call('setns', os.open('/proc/1/ns/mnt', os.O_RDONLY), 0))")
    assert out == "EPERM EPERM"


def test_engine_is_invisible_and_cannot_be_traced(sandbox: hutch.Sandbox,
                                                  engine: dict[str, Any]) -> None:
    pids = [request_blocking("GET", "/v1/engine")["pid"],
            int((Path(os.environ["HUTCH_RUNTIME_DIR"]) / "pause.pid").read_text())]
    for pid in pids:
        assert Path(f"/proc/{pid}").is_dir()  # the host sees them
    result = json.loads(_python(sandbox, f"""
import signal
out = {{}}
for pid in {pids}:
    out[pid] = [os.path.exists(f'/proc/{{pid}}'), os_call(os.kill, pid, 0),
                call('ptrace', 16, pid, 0, 0)]  # PTRACE_ATTACH
child = os.fork()
if child == 0:
    while True:
        signal.pause()
out['own child'] = call('ptrace', 16, child, 0, 0)
os.waitpid(child, os.WUNTRACED)
os.kill(child, signal.SIGKILL)
os.waitpid(child, 0)
out['pids'] = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
print(json.dumps(out))
"""))
    for pid in pids:
        assert result[str(pid)] == [False, "ESRCH", "ESRCH"], pid
        assert pid not in result["pids"]
    assert result["own child"] == "ok"  # ptrace itself works: debuggers do
    assert 1 in result["pids"]


def test_proc_1_root_is_the_sandboxs_own_root(sandbox: hutch.Sandbox,
                                              host_marker: Path) -> None:
    out = _python(sandbox, f"""
open('/tmp/inside', 'w').write('sandbox')
print(os.readlink('/proc/1/root'), open('/proc/1/root/tmp/inside').read(),
      os.stat('/proc/1/root/').st_ino == os.stat('/').st_ino,
      os_call(os.stat, '/proc/1/root{host_marker}'),
      os_call(os.stat, '/proc/1/root{host_marker.parent}'))
""")
    assert out.split() == ["/", "sandbox", "True", "ENOENT", "ENOENT"]
    assert host_marker.read_text() == "host\n"


def test_engine_socket_and_state_are_unreachable(sandbox: hutch.Sandbox,
                                                 engine: dict[str, Any]) -> None:
    sock = Path(os.environ["HUTCH_RUNTIME_DIR"]) / "engine.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert str(sock) in Path("/proc/net/unix").read_text()  # as the host sees it
    out = _python(sandbox, f"""
s = socket.socket(socket.AF_UNIX)
print(os.path.exists({str(sock)!r}), os_call(s.connect, {str(sock)!r}),
      {str(sock)!r} in open('/proc/net/unix').read(),
      os.path.exists({engine["data_dir"]!r}), os.path.exists({str(sock.parent)!r}))
""")
    assert out.split() == ["False", "ENOENT", "False", "False", "False"]


@pytest.mark.parametrize("path", ["/proc/sys/kernel/hostname", "/proc/sys/vm/drop_caches",
                                  "/proc/sys/kernel/core_pattern"])
def test_writing_proc_sys_fails(sandbox: hutch.Sandbox, path: str) -> None:
    readable = os.access(path, os.R_OK)  # drop_caches is write-only
    before = Path(path).read_text() if readable else None
    out = _python(sandbox, f"print(os.access({path!r}, os.F_OK), "
                           f"os_call(lambda: open({path!r}, 'w').write('3')))")
    assert out == "True EROFS"
    assert (Path(path).read_text() if readable else None) == before
    assert socket.gethostname() != sandbox.object_id


def test_writing_sys_fails(sandbox: hutch.Sandbox) -> None:
    out = _python(sandbox, """
files = [os.path.join(d, f) for d, _, fs in os.walk('/sys/kernel') for f in fs]
target = next(f for f in files if os.stat(f).st_mode & 0o200)  # writable by its owner
print(os_call(lambda: open(target, 'w').write('x')), os_call(os.mkdir, '/sys/hutch'),
      os_call(os.mkdir, '/tmp/control'))
""")
    assert out == "EROFS EROFS ok"


@pytest.mark.parametrize("kind,device", [("S_IFCHR", (1, 1)), ("S_IFBLK", (254, 0)),
                                         ("S_IFCHR", (10, 232))])  # /dev/mem, vda, kvm
def test_mknod_of_a_device_fails(sandbox: hutch.Sandbox, kind: str,
                                 device: tuple[int, int]) -> None:
    out = _python(sandbox, f"""
import stat
print(os_call(os.mknod, '/tmp/dev', stat.{kind} | 0o600, os.makedev(*{device})),
      os_call(os.mknod, '/dev/new', stat.{kind} | 0o600, os.makedev(*{device})),
      os_call(os.mknod, '/tmp/fifo', stat.S_IFIFO | 0o600))
""")
    assert out == "EPERM EPERM ok"


STANDARD_DEV = {"null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm",
                "mqueue", "fd", "stdin", "stdout", "stderr"}
#: What runtimes may add: the /proc/kcore link (masked) and a console for terminals.
OPTIONAL_DEV = {"core", "console"}
#: (major, minor) of null, zero, full, random, urandom, tty, and the devpts ptmx.
STANDARD_NODES = {(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2)}


def test_dev_has_only_standard_nodes(sandbox: hutch.Sandbox) -> None:
    listing = json.loads(_python(sandbox, """
import stat
out = {'names': sorted(os.listdir('/dev')), 'nodes': []}
for d, dirs, files in os.walk('/dev'):
    for name in dirs + files:
        st = os.lstat(os.path.join(d, name))
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            out['nodes'].append([os.path.join(d, name), stat.S_ISBLK(st.st_mode),
                                 os.major(st.st_rdev), os.minor(st.st_rdev)])
print(json.dumps(out))
"""))
    names = set(listing["names"])
    assert STANDARD_DEV <= names <= STANDARD_DEV | OPTIONAL_DEV, names
    for path, block, major, minor in listing["nodes"]:
        assert not block, path
        assert (major, minor) in STANDARD_NODES or path.startswith("/dev/pts/"), path
    assert {p for p, *_ in listing["nodes"]} >= {"/dev/null", "/dev/zero", "/dev/urandom"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_rm_rf_root_leaves_host_image_and_other_sandboxes_intact(
    engine: dict[str, Any], host_marker: Path,
) -> None:
    ca_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    ca_before = _sha256(ca_bundle) if ca_bundle.is_file() else None
    victim = hutch.Sandbox.create(timeout=300)
    bystander = hutch.Sandbox.create(timeout=300)
    try:
        assert _sh(bystander, "echo mine > /root/keep")[0] == 0
        code, out, err = _sh(victim, "rm -rf --no-preserve-root / 2>/dev/null; "
                                     "[ -e /usr/bin/python3 ] && echo kept || echo gone; "
                                     "[ -e /etc/hostname ] && echo etc-bind-kept", timeout=240)
        assert (code, out.split()) == (0, ["gone", "etc-bind-kept"]), err
        # the host: its files, and what the engine bound into the sandbox read-only
        assert host_marker.read_text() == "host\n"
        if ca_before is not None:
            assert _sha256(ca_bundle) == ca_before
        assert (Path(engine["data_dir"]) / "state.db").is_file()
        # the other sandbox, running all along
        assert bystander.poll() is None
        code, out, err = _sh(bystander, "python3 -c 'print(6 * 7)'; cat /root/keep")
        assert (code, out) == (0, "42\nmine\n"), err
        # the image's layers: a new sandbox from the same image is whole
        fresh = hutch.Sandbox.create(timeout=300)
        try:
            code, out, err = _sh(fresh, "python3 -c 'import ssl, json; print(1)' && "
                                        "test -f /etc/os-release && ls /usr/bin | wc -l")
            assert code == 0, err
            assert out.split()[0] == "1" and int(out.split()[1]) > 100
        finally:
            fresh.terminate(grace_period=0)
    finally:
        victim.terminate(grace_period=0)
        bystander.terminate(grace_period=0)
