"""A sandbox's slirp4netns that died, and its pid taken by another process of the user.

The engine keeps the pid of each sandbox's slirp4netns (in ``slirp4netns.pid``), so that a
restarted daemon can stop it when the sandbox ends.  If slirp4netns dies first (killed, the
OOM killer: it parses every packet the sandbox sends) while no daemon is its parent, the
pause process reaps it and its pid is free; the host's pid counter comes round to it, and
an unrelated process of the same user takes it.  The engine used to stop "its" slirp4netns
by that pid after checking only that ``slirp4netns`` appeared on the command line, so
terminating the sandbox sent SIGTERM to whatever held the pid: here another slirp4netns of
the user's (one per rootless podman container, or per sandbox of another engine: the same
program with another namespace, as likely a victim as any).  It is now pinned by a pidfd
and must name the sandbox's own API socket (:func:`hutch.engine.network.outbound.slirp_of`).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hutch
from tests.helpers import kill_daemon, process_with_pid, wait_for


def _ended(pidfd: int) -> bool:
    return bool(select.select([pidfd], [], [], 0)[0])


@contextmanager
def _own_netns() -> Iterator[int]:
    """A process of this user in a user and network namespace of its own (as a rootless
    container's first process is); yields its pid."""
    ours = os.readlink("/proc/self/ns/net")
    holder = subprocess.Popen(["unshare", "--user", "--map-root-user", "--net",
                               "sleep", "600"])
    try:
        def unshared() -> bool:
            try:
                return os.readlink(f"/proc/{holder.pid}/ns/net") != ours
            except OSError:
                return False

        wait_for(unshared, timeout=10, what="unshare to make a network namespace")
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def _slirp4netns_on(pid: int, netns_holder: int) -> subprocess.Popen[bytes]:
    """An ordinary slirp4netns of the user, for the namespaces of ``netns_holder``, as
    process ``pid``; returned once it says it is ready.

    It starts with SIGTERM blocked (a mask is inherited through fork and exec), so that a
    SIGTERM sent to it stays pending, where :func:`_signals_sent` reads it at once: the
    check does not race with how soon the process would have died of it."""
    ready_r, ready_w = os.pipe()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        proc = process_with_pid(pid, [
            "slirp4netns", f"--ready-fd={ready_w}",
            f"--userns-path=/proc/{netns_holder}/ns/user",
            "--netns-type=path", f"/proc/{netns_holder}/ns/net", "tap0",
        ], pass_fds=(ready_w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(ready_w)
        ready_w = -1
        readable, _, _ = select.select([ready_r], [], [], 20)
        assert readable and os.read(ready_r, 1) == b"1", \
            f"the unrelated slirp4netns did not start (exit code {proc.poll()})"
        return proc
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(ready_r)
        if ready_w >= 0:
            os.close(ready_w)


def _signals_sent(pid: int) -> set[signal.Signals]:
    """SIGTERM and SIGKILL among the signals pending for ``pid`` (a fatal signal is
    pending as SIGKILL from the moment it is sent until the process is gone)."""
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines())
    pending = int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)
    return {s for s in (signal.SIGTERM, signal.SIGKILL) if pending & (1 << (s - 1))}


def test_terminate_spares_a_process_on_the_pid_of_a_dead_slirp4netns(
        engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create(timeout=300)  # network access: it has a slirp4netns
    victim: subprocess.Popen[bytes] | None = None
    try:
        with _own_netns() as holder:
            sandbox_dir = Path(engine["data_dir"]) / "sandboxes" / sb.object_id
            slirp = int((sandbox_dir / "slirp4netns.pid").read_text())
            pidfd = os.pidfd_open(slirp)
            try:
                assert Path(f"/proc/{slirp}/cmdline").read_bytes().startswith(b"slirp4netns\0")
                # With its daemon gone, slirp4netns is the pause process's child: that
                # reaps it when it dies, and frees its pid, while the engine keeps it.
                kill_daemon()
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                wait_for(lambda: _ended(pidfd), what="slirp4netns to die")
            finally:
                os.close(pidfd)
            wait_for(lambda: not Path(f"/proc/{slirp}").exists(), timeout=20,
                     what="the pause process to reap slirp4netns (its pid free)")
            assert (sandbox_dir / "slirp4netns.pid").read_text() == str(slirp)
            victim = _slirp4netns_on(slirp, holder)
            # The next call reaches a new engine, which adopts the sandbox (alive, in
            # the engine's namespace) and ends it: its slirp4netns is stopped.
            assert sb.terminate(wait=True) == 137
            assert victim.poll() is None, \
                "terminating the sandbox killed an unrelated process on its slirp4netns's pid"
            assert not _signals_sent(victim.pid), \
                "terminating the sandbox signalled an unrelated process on its slirp4netns's pid"
            assert not (sandbox_dir / "slirp4netns.pid").exists()
    finally:
        if victim is not None:
            victim.kill()
            victim.wait()
        sb.terminate()
