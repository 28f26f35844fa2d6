"""50 sandboxes at once: how long it takes to have them all running, and what each costs.

For each contender, ``N`` idle sandboxes (``sleep infinity``) are started concurrently
(hutch: ``Sandbox.create`` from 16 threads; crun and podman: ``N`` detached ``run``
commands at once, 16 at a time), timed from the first call until every one is running.
Then the memory every process this user runs gained is summed, its subordinate ids
included (each hutch sandbox's init runs under its own slice of them, a podman container
under its own): the processes that are new (sandbox inits, slirp4netns, conmon, ...) count
whole, the ones that were already there (hutch's engine, podman's pause process) count
with their growth; the benchmark's own process is left out.  Memory is PSS
(``/proc/<pid>/smaps_rollup``: shared pages divided among the processes sharing them),
divided by ``N``: what one more idle sandbox costs.
Everything is torn down before the next round; rounds alternate between contenders.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.harness import Stats, Unavailable, describe, engine_settled
from benchmarks.peers import SLEEP_ARGV, CrunPeer, PodmanPeer

PARALLEL = 16


def _owned(uid: int) -> Callable[[int], bool]:
    """Whether a process's uid is this user's: its own or one of its subordinate ids (a
    hutch sandbox's init runs under its own slice of them, a podman container's too)."""
    from hutch.engine.kernel.userns import subid_range

    sub = subid_range("/etc/subuid", uid)
    return lambda owner: owner == uid or (
        sub is not None and sub.start <= owner < sub.start + sub.count)


def _pss_by_pid() -> dict[int, int]:
    """PSS in bytes of every process of this user (or its subordinate ids) that can be
    read."""
    ours, me = _owned(os.getuid()), os.getpid()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if not ours(entry.stat().st_uid):
                continue
            for line in (entry / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    found[int(entry.name)] = int(line.split()[1]) * 1024
                    break
        except (OSError, ValueError):
            continue
    return found


def _added(before: dict[int, int], after: dict[int, int]) -> int:
    new = sum(pss for pid, pss in after.items() if pid not in before)
    grown = sum(max(0, after[pid] - before[pid]) for pid in after if pid in before)
    return new + grown


class Round:
    """One contender's way to start ``n`` idle sandboxes at once and to remove them."""

    def __init__(self, name: str, start: Callable[[int], list[Any]],
                 stop: Callable[[list[Any]], None],
                 settle: Callable[[], None] = lambda: None) -> None:
        self.name, self.start, self.stop, self.settle = name, start, stop, settle

    def run(self, n: int) -> tuple[float, int]:
        before = _pss_by_pid()
        t0 = time.perf_counter()
        handles = self.start(n)
        elapsed = time.perf_counter() - t0
        try:
            self.settle()
            per_sandbox = _added(before, _pss_by_pid()) // n
        finally:
            self.stop(handles)
        return elapsed, per_sandbox


def hutch_round(pool: ThreadPoolExecutor, exec_first: bool = False) -> Round:
    """hutch's round; ``exec_first``: each sandbox also runs one ``exec true`` (then it has a
    zygote, which stays for 30 s after its last command), timed with the creates."""
    import hutch

    def create(_: int) -> Any:
        sb = hutch.Sandbox.create(timeout=600)
        if exec_first and sb.exec("true").wait() != 0:
            raise RuntimeError(f"exec true in {sb.object_id} failed")
        return sb

    def start(n: int) -> list[Any]:
        return list(pool.map(create, range(n)))

    def stop(sandboxes: list[Any]) -> None:
        list(pool.map(lambda sb: sb.terminate(wait=True), sandboxes))

    def settle() -> None:
        """Untimed, before the memory is read: the engine's reserve refilled.  The creates
        took its waiting sandboxes (counted before, as the engine's); their successors
        count as new processes, so that ``n`` sandboxes' worth is added in all."""
        engine_settled()
    return Round("hutch, after an exec" if exec_first else "hutch", start, stop, settle)


def _run_one(argv: list[str]) -> None:
    # a file, not a pipe: a detached container keeps its stderr open for good
    with tempfile.TemporaryFile() as err:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=err, timeout=300, check=False)
        if proc.returncode != 0:
            err.seek(0)
            raise Unavailable(f"{argv[0]} exited {proc.returncode}: "
                              f"{err.read().decode(errors='replace')[-300:]}")


def _run_all(pool: ThreadPoolExecutor, argvs: list[list[str]]) -> None:
    list(pool.map(_run_one, argvs))


def crun_round(pool: ThreadPoolExecutor, peer: CrunPeer) -> Round:
    def start(n: int) -> list[Any]:
        ids = [peer._next_id() for _ in range(n)]
        _run_all(pool, [[*peer._base(), "run", "--detach", "--bundle",
                         str(peer.sleep_bundle), cid] for cid in ids])
        return ids

    def stop(ids: list[Any]) -> None:
        _run_all(pool, [[*peer._base(), "delete", "--force", cid] for cid in ids])
    return Round("crun", start, stop)


def crun_isolated_round(pool: ThreadPoolExecutor, peer: CrunPeer, workdir: Path) -> Round:
    """raw crun doing what every hutch sandbox with network access has, with the same
    parts: its own network namespace and seccomp filter (in the bundle), slirp4netns
    connecting it and hutch's firewall loaded inside it by ``nft`` (hutch loads it with
    libnftables, in a forked child, before the start).  Not included: hutch's cgroup, its
    own id range, its overlay root, and slirp4netns's ``--enable-sandbox`` (it must start
    inside the sandbox's user namespace for that, as hutch's does); so this is a floor
    for a sandbox as isolated as hutch's, made from these parts."""
    from hutch.engine.network import outbound

    workdir.mkdir(parents=True, exist_ok=True)
    bundle = peer.isolated_bundle(workdir / "bundle")
    rules = workdir / "firewall.nft"
    rules.write_text(outbound.ruleset(None))
    nft = shutil.which("nft") or "/usr/sbin/nft"

    def one(cid: str) -> tuple[str, int | None]:
        pid_file = workdir / f"{cid}.pid"
        _run_one([*peer._base(), "run", "--detach", "--pid-file", str(pid_file),
                  "--bundle", str(bundle), cid])
        pid = pid_file.read_text().strip()
        # crun returns before its init has exec'd the command; until then the init is not
        # dumpable and its namespaces cannot be named through /proc
        deadline = time.monotonic() + 5
        while not os.path.exists(f"/proc/{pid}/ns/user") and time.monotonic() < deadline:
            time.sleep(0.001)
        log = workdir / f"{cid}.slirp.log"
        ready_r, ready_w = os.pipe()
        try:
            slirp = os.posix_spawnp("slirp4netns", [
                "slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback",
                "--enable-seccomp", "--ready-fd=3", f"--userns-path=/proc/{pid}/ns/user",
                "--netns-type=path", f"/proc/{pid}/ns/net", "tap0"], dict(os.environ),
                file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                              (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                              (os.POSIX_SPAWN_OPEN, 2, str(log),
                               os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                              (os.POSIX_SPAWN_DUP2, ready_w, 3)])
        finally:
            os.close(ready_w)
        with os.fdopen(ready_r, "rb") as ready:
            if ready.read(1) != b"1":
                _end(cid, slirp)
                raise Unavailable("slirp4netns did not become ready: "
                                  + log.read_text(errors="replace")[-300:])
        try:
            _run_one(["nsenter", "--preserve-credentials", "-U", "-n", "-t", pid,
                      nft, "-f", str(rules)])
        except BaseException:
            _end(cid, slirp)
            raise
        return cid, slirp

    def _end(cid: str, slirp: int | None) -> None:
        if slirp is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(slirp, signal.SIGKILL)
            os.waitpid(slirp, 0)
        with contextlib.suppress(Unavailable):
            _run_one([*peer._base(), "delete", "--force", cid])

    def start(n: int) -> list[Any]:
        started = [pool.submit(one, peer._next_id()) for _ in range(n)]
        made = [f.result() for f in started if f.exception() is None]
        failed = [f.exception() for f in started if f.exception() is not None]
        if failed:
            stop(made)  # (whatever did start is not left running)
            raise failed[0]  # type: ignore[misc]
        return made

    def stop(handles: list[Any]) -> None:
        list(pool.map(lambda h: _end(*h), handles))
    return Round("crun, isolated as hutch", start, stop)


def podman_round(pool: ThreadPoolExecutor, peer: PodmanPeer) -> Round:
    def start(n: int) -> list[Any]:
        names = [f"hutch-bench-{os.getpid()}-{i}" for i in range(n)]
        _run_all(pool, [[*peer.base, "run", "-d", "--rm", "--pull=never", "--name", name,
                         peer.tag, *SLEEP_ARGV] for name in names])
        return names

    def stop(names: list[Any]) -> None:
        with contextlib.suppress(Unavailable):
            _run_all(pool, [[*peer.base, "rm", "--force", "--time", "0", *names]])
    return Round("podman", start, stop)


def run(rounds: list[Round], n: int, runs: int, progress: Callable[[str], None]
        ) -> dict[str, Any]:
    """``runs`` rounds of each contender, alternating; medians of time and memory."""
    times: dict[str, list[float]] = {r.name: [] for r in rounds}
    memory: dict[str, list[float]] = {r.name: [] for r in rounds}
    failed: dict[str, str] = {}
    for i in range(runs):
        for contender in rounds[i % len(rounds):] + rounds[:i % len(rounds)]:
            if contender.name in failed:
                continue
            try:
                elapsed, per = contender.run(n)
            except Exception as exc:  # one contender failing never stops the others
                failed[contender.name] = describe(exc)
                progress(f"  {contender.name}: unavailable: {failed[contender.name]}")
                continue
            times[contender.name].append(elapsed)
            memory[contender.name].append(per)
            progress(f"  {contender.name} round {i + 1}: {n} running in {elapsed:.2f} s, "
                     f"{per / 2**20:.2f} MiB each")
    out: dict[str, Any] = {"n": n, "runs": runs, "peers": {}}
    for contender in rounds:
        name = contender.name
        if name in failed or not times[name]:
            out["peers"][name] = {"available": False,
                                  "reason": failed.get(name, "no rounds ran")}
            continue
        out["peers"][name] = {"available": True,
                              "total_s": Stats.of(times[name]).as_dict(),
                              "pss_per_sandbox_bytes": Stats.of(memory[name]).as_dict()}
    return out
