"""The ``hutch`` command over a real engine."""

from __future__ import annotations

from typing import Any

import hutch
from tests.helpers import hutch_cli


def test_run_streams_and_returns_the_code(engine: dict[str, Any]) -> None:
    r = hutch_cli("run", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert r.returncode == 3
    assert r.stdout == b"out\n"
    assert r.stderr == b"err\n"


def test_run_python_and_stdin(engine: dict[str, Any]) -> None:
    r = hutch_cli("run", "-i", "--", "python3", "-c", "import sys; print(sys.stdin.read()[::-1])",
                  input=b"abc")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"cba\n"


def test_run_timeout(engine: dict[str, Any]) -> None:
    r = hutch_cli("run", "--timeout", "1", "--", "sleep", "60")
    assert r.returncode != 0


def test_ps_exec_terminate(engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create(name="cli-target", timeout=60)
    ps = hutch_cli("ps")
    assert ps.returncode == 0
    assert sb.object_id in ps.stdout.decode() and "cli-target" in ps.stdout.decode()
    ex = hutch_cli("exec", sb.object_id, "--", "sh", "-c", "echo $((6*7)); exit 4")
    assert ex.returncode == 4 and ex.stdout == b"42\n"
    term = hutch_cli("terminate", sb.object_id)
    assert term.returncode == 0
    assert sb.object_id not in hutch_cli("ps").stdout.decode()


def test_unknown_sandbox_is_a_clear_error(engine: dict[str, Any]) -> None:
    r = hutch_cli("exec", "sb-" + "x" * 22, "--", "true")
    assert r.returncode == 125
    assert b"NotFoundError" in r.stderr
    malformed = hutch_cli("exec", "sb-nope", "--", "true")
    assert malformed.returncode == 125
    assert b"InvalidError: Invalid Sandbox ID: 'sb-nope'" in malformed.stderr


def test_doctor(engine: dict[str, Any]) -> None:
    r = hutch_cli("doctor")
    out = r.stdout.decode()
    assert r.returncode == 0, out
    for name in ("crun", "runc", "newuidmap", "mmdebstrap", "subuid/subgid", "cgroups",
                 "user namespaces", "runtime", "slirp4netns", "libnftables", "libseccomp",
                 "openssl", "limit: memory", "limit: pids", "limit: ephemeral_disk"):
        assert f"] {name}" in out
    # this host makes bridges in a user namespace (the private network tests need them)
    assert "[ok  ] private networks: bridge and veth pairs" in out


def test_run_with_an_explicit_image(engine: dict[str, Any]) -> None:
    r = hutch_cli("run", "--image", engine["default_image"], "--", "cat", "/etc/debian_version")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip().startswith("12")
    missing = hutch_cli("run", "--image", "hutch/nothing:here", "--", "true")
    assert missing.returncode == 125
    assert b"NotFoundError" in missing.stderr


def test_tls_trust_without_root_says_what_to_run(engine: dict[str, Any]) -> None:
    from hutch.tools import tlstrust

    done = hutch_cli("tls", "trust")  # (no terminal here: no sudo prompt)
    assert done.returncode == 1
    assert b"this needs root; run:\n  sudo install -D -m 0644 " in done.stderr
    assert str(tlstrust.anchor()).encode() in done.stderr
    assert hutch_cli("tls", "status").stdout.decode().endswith("not installed\n")
