"""What a sandbox can see and do by default: namespaces, capabilities, /proc, rootfs."""

from __future__ import annotations

import os
from typing import Any

import hutch
from hutch.engine.runtime.ociconfig import DEFAULT_CAPABILITIES

# Capability numbers (linux/capability.h) of podman's default set.
CAP_NUMBERS = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4, "CAP_KILL": 5,
    "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_NET_BIND_SERVICE": 10,
    "CAP_SYS_CHROOT": 18, "CAP_SETFCAP": 31,
}


def _run(sb: hutch.Sandbox, script: str) -> str:
    p = sb.exec("sh", "-c", script)
    out = p.stdout.read()
    assert p.wait() == 0, p.stderr.read()
    return str(out)


def test_identity_and_namespaces(sandbox: hutch.Sandbox) -> None:
    assert _run(sandbox, "hostname").strip() == sandbox.object_id
    assert _run(sandbox, "id -u").strip() == "0"
    # A new pid namespace: the entrypoint is pid 1.
    assert _run(sandbox, "cat /proc/1/cmdline | tr '\\0' ' '").strip() == "sleep infinity"
    # Every namespace differs from the engine's host-side view except the user namespace,
    # which is the engine's own (like podman's rootless containers).
    inside = _run(sandbox,
                  "for n in pid mnt ipc uts net cgroup; do readlink /proc/self/ns/$n; done")
    host = "\n".join(os.readlink(f"/proc/self/ns/{n}")
                     for n in ("pid", "mnt", "ipc", "uts", "net", "cgroup"))
    for a, b in zip(inside.split(), host.split(), strict=True):
        assert a != b


def test_blocked_network_is_loopback_only(engine: dict[str, Any]) -> None:
    sandbox = hutch.Sandbox.create(block_network=True, timeout=60)
    try:
        devices = _run(sandbox, "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '").split()
        assert devices == ["lo"]
        code = sandbox.exec("python3", "-c", "import socket; s=socket.socket(); "
                            "s.bind(('127.0.0.1', 0)); s.listen()").wait()
        assert code == 0
    finally:
        sandbox.terminate()


def test_default_network_has_its_own_stack(sandbox: hutch.Sandbox) -> None:
    devices = _run(sandbox, "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '").split()
    assert sorted(devices) == ["lo", "tap0"]  # slirp4netns's device, in its own namespace
    assert _run(sandbox, "cat /etc/resolv.conf") == "nameserver 10.0.2.3\n"


def test_no_new_privs_and_capabilities(sandbox: hutch.Sandbox) -> None:
    status = dict(line.split(":\t", 1) for line in
                  _run(sandbox, "cat /proc/self/status").splitlines() if ":\t" in line)
    assert status["NoNewPrivs"].strip() == "1"
    expected = sum(1 << CAP_NUMBERS[c] for c in DEFAULT_CAPABILITIES)
    assert int(status["CapEff"], 16) == expected
    assert int(status["CapBnd"], 16) == expected


def test_proc_is_masked_and_read_only(sandbox: hutch.Sandbox) -> None:
    from hutch.engine.runtime.ociconfig import MASKED_PATHS

    files = [p for p in MASKED_PATHS if p.startswith("/proc/") and os.path.isfile(p)]
    assert files, "the host has none of the masked /proc files"
    for path in files:  # bind-mounted over with /dev/null: empty
        assert _run(sandbox, f"wc -c < {path}").strip() == "0", path
    assert sandbox.exec("sh", "-c", "echo 1 > /proc/sys/kernel/domainname").wait() != 0
    assert sandbox.exec("sh", "-c", "echo 1 > /proc/sysrq-trigger").wait() != 0
    assert sandbox.exec("sh", "-c", "touch /sys/x").wait() != 0
    assert sandbox.exec("mount", "-t", "tmpfs", "t", "/mnt").wait() != 0


def test_rootfs_is_an_overlay_private_to_each_sandbox(engine: dict[str, Any]) -> None:
    a = hutch.Sandbox.create(timeout=60)
    b = hutch.Sandbox.create(timeout=60)
    try:
        root = _run(a, "grep ' / / ' /proc/self/mountinfo")
        assert " - overlay overlay " in root
        _run(a, "echo mine > /etc/only-in-a && rm /etc/issue")
        assert _run(a, "cat /etc/only-in-a") == "mine\n"
        assert b.exec("test", "-e", "/etc/only-in-a").wait() == 1
        assert b.exec("test", "-e", "/etc/issue").wait() == 0
    finally:
        a.terminate()
        b.terminate()
    c = hutch.Sandbox.create(timeout=60)
    assert c.exec("test", "-e", "/etc/issue").wait() == 0  # the shared layer is untouched
    c.terminate()


def test_sandbox_directories_are_removed_on_terminate(engine: dict[str, Any]) -> None:
    from pathlib import Path

    pause = int((Path(os.environ["HUTCH_RUNTIME_DIR"]) / "pause.pid").read_text())
    engine_mounts = Path(f"/proc/{pause}/mountinfo")  # the engine's mount namespace
    sb = hutch.Sandbox.create(timeout=60)
    root = Path(engine["data_dir"]) / "sandboxes" / sb.object_id
    assert (root / "upper").is_dir()
    assert sb.object_id in engine_mounts.read_text()
    sb.terminate()
    assert not (root / "upper").exists()
    assert not (root / "merged").exists()
    assert sb.object_id not in engine_mounts.read_text()


def test_default_image_has_what_users_expect(sandbox: hutch.Sandbox) -> None:
    out = _run(sandbox, "python --version; bash --version | head -1; ps --version; "
                        "ls /etc/ssl/certs | head -1; python3 -m pip --version")
    assert "Python 3.11" in out and "GNU bash" in out and "procps" in out and "pip " in out
    # pip is usable: the PEP 668 marker that would refuse `pip install` is gone.
    assert sandbox.exec("sh", "-c", "ls /usr/lib/python3*/EXTERNALLY-MANAGED").wait() != 0
    assert sandbox.exec("python3", "-m", "venv", "/tmp/v").wait() == 0


def test_a_sandbox_can_remove_and_recreate_image_directories(engine: dict[str, Any]) -> None:
    """Removing a directory that lives in a lower layer needs an opaque-dir mark, which a
    user-namespace overlay can only write as a user.* xattr (``userxattr``)."""
    a = hutch.Sandbox.create(timeout=60)
    b = hutch.Sandbox.create(timeout=60)
    try:
        p = a.exec("sh", "-c", "rm -rf /usr/share/doc && mkdir /usr/share/doc && "
                   "touch /usr/share/doc/new && ls /usr/share/doc")
        assert (p.stdout.read(), p.stderr.read(), p.wait()) == ("new\n", "", 0)
        assert b.exec("test", "-d", "/usr/share/doc/bash").wait() == 0  # the layer is intact
    finally:
        a.terminate()
        b.terminate()


def test_non_root_users_in_a_sandbox_can_run_programs(sandbox: hutch.Sandbox) -> None:
    """The sandbox's / is 0755 (not the engine's private umask), so uid 65534 works too."""
    assert sandbox.exec("stat", "-c", "%a", "/").stdout.read() == "755\n"
    p = sandbox.exec("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                     "python3", "-c", "import os; print(os.getuid())")
    assert (p.stdout.read(), p.wait()) == ("65534\n", 0), p.stderr.read()
