"""Attacks on ``exec(pty=True)`` and ``exec(user=...)`` from inside a sandbox.

The zygote that starts such commands reads the sandbox's ``/etc/passwd`` and ``/etc/group``
and opens its ``/dev/ptmx``: the sandbox's root may have replaced each with a FIFO (an open
that blocks would wedge the zygote and every later exec), a symlink or a huge file.  A
command started as a user must not get root back (setuid files, capabilities), and a
sandbox's terminals must be its own."""

from __future__ import annotations

import time

import pytest

import hutch


def _alive(sb: hutch.Sandbox) -> None:
    """The sandbox still runs commands (its zygote is not wedged)."""
    p = sb.exec("echo", "still-here")
    assert p.stdout.read() == "still-here\n" and p.wait() == 0


def test_a_fifo_for_passwd_and_group_never_blocks_the_zygote(sandbox: hutch.Sandbox) -> None:
    setup = sandbox.exec("sh", "-c", "rm /etc/passwd /etc/group && mkfifo /etc/passwd "
                         "/etc/group")
    assert setup.wait() == 0, setup.stderr.read()
    started = time.monotonic()
    p = sandbox.exec("id", user="nobody")
    assert p.wait() == 126
    assert "unable to find user nobody" in p.stderr.read()
    assert sandbox.exec("id", "-u", user="65534").stdout.read() == "65534\n"
    assert time.monotonic() - started < 30
    _alive(sandbox)


def test_a_huge_passwd_is_read_only_in_part(sandbox: hutch.Sandbox) -> None:
    setup = sandbox.exec("sh", "-c", "head -c 200000000 /dev/zero | tr '\\0' x > /tmp/big && "
                         "cat /etc/passwd >> /tmp/big && mv /tmp/big /etc/passwd")
    assert setup.wait() == 0, setup.stderr.read()
    p = sandbox.exec("id", user="nobody")  # its line lies past the first MiB: not read
    assert p.wait() == 126
    _alive(sandbox)


def test_a_fake_ptmx_is_refused_and_the_sandbox_goes_on(sandbox: hutch.Sandbox) -> None:
    for fake in ("mkfifo /dev/ptmx", "ln -s /dev/null /dev/ptmx", "touch /dev/ptmx"):
        setup = sandbox.exec("sh", "-c", f"rm -f /dev/ptmx && {fake}")
        assert setup.wait() == 0, setup.stderr.read()
        with pytest.raises(hutch.exception.ConflictError, match="no usable terminal"):
            sandbox.exec("true", pty=True)
        _alive(sandbox)


def test_a_user_cannot_get_root_back_through_a_setuid_file(sandbox: hutch.Sandbox) -> None:
    setup = sandbox.exec("sh", "-c", "cp /usr/bin/id /tmp/suid-id && chmod 4755 /tmp/suid-id")
    assert setup.wait() == 0, setup.stderr.read()
    p = sandbox.exec("sh", "-c", "/tmp/suid-id -u; grep -E '^Cap(Prm|Eff|Amb)' "
                     "/proc/self/status", user="nobody")
    assert p.wait() == 0
    lines = p.stdout.read().splitlines()
    assert lines[0] == "65534"  # no_new_privs: the setuid bit gives nothing
    assert all(line.split()[1] == "0000000000000000" for line in lines[1:]), lines


def test_a_user_cannot_write_roots_files_or_signal_roots_processes(
        sandbox: hutch.Sandbox) -> None:
    root_job = sandbox.exec("sleep", "300")
    pid = sandbox.exec("pgrep", "-x", "sleep").stdout.read().split()[0]
    p = sandbox.exec("sh", "-c", f"kill -9 {pid}; echo x > /etc/hostname-not", user="nobody")
    assert p.wait() != 0
    err = p.stderr.read()
    assert "Operation not permitted" in err and "Permission denied" in err
    assert root_job.poll() is None
    root_job.kill()


def test_terminals_of_two_sandboxes_are_apart(engine: object) -> None:
    first = hutch.Sandbox.create(timeout=120)
    second = hutch.Sandbox.create(timeout=120)
    try:
        held = first.exec("sh", "-c", "tty; exec sleep 300", pty=True)
        tty = next(iter(held.stdout)).strip()
        assert tty.startswith("/dev/pts/")
        # the other sandbox's devpts is its own instance: the first one's terminal is not there
        listing = second.exec("ls", "/dev/pts").stdout.read().split()
        assert listing == ["ptmx"], listing
        write = second.exec("sh", "-c", f"echo injected > {tty}")
        assert write.wait() != 0
        held.kill()
    finally:
        first.terminate(grace_period=0)
        second.terminate(grace_period=0)
