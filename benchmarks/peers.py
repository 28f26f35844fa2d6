"""The contenders hutch is measured against: raw crun, rootless podman and bwrap.

Each adapter turns one tool into the two trials of the benchmark (see
:mod:`benchmarks.harness`):

- ``startup_trial``: start a container over the shared rootfs running
  ``python3 -c 'print(1)'`` and time until its first output line.
- ``open_exec``: start a long-lived container (``sleep infinity``) and return a trial that
  times one ``exec true`` round trip in it.  Peers without an exec (bwrap) raise
  :class:`Unavailable`.

Set-up problems raise :class:`Unavailable`; ``close`` is best effort and never raises.  The
rootfs is only ever mounted read-only, because it is hutch's shared image layer.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.environment import Rootfs
from benchmarks.harness import (
    Sample,
    Trial,
    Unavailable,
    check_output,
    describe,
    time_command,
    time_first_line,
)

PRINT_ARGV = ["python3", "-c", "print(1)"]
SLEEP_ARGV = ["sleep", "infinity"]


class Peer:
    """Base of all contenders: a name, the commands it runs, notes for the report."""

    name = "peer"

    def __init__(self) -> None:
        self.notes: list[str] = []

    def startup_command(self) -> str:
        raise NotImplementedError

    def exec_command(self) -> str | None:
        """The exec round trip as a shell line; None if this peer has no exec."""
        return None

    def startup_trial(self) -> Trial:
        raise NotImplementedError

    def open_exec(self) -> Trial:
        raise Unavailable(f"{self.name} has no exec into a running container")

    def close(self) -> None:
        """Stop whatever :meth:`open_exec` started (best effort)."""


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise Unavailable(f"{tool} is not installed (not on PATH)")
    return path


class CrunPeer(Peer):
    """``crun run`` of a bundle whose root is the shared layer, read-only.

    As an unprivileged user the bundle comes from ``crun spec --rootless``: crun makes the
    user namespace itself (the caller's uid mapped to root) and skips cgroups.
    """

    name = "crun"

    def __init__(self, rootfs: Rootfs, workdir: Path) -> None:
        super().__init__()
        self.crun = _require("crun")
        self.rootfs = rootfs
        self.state = workdir / "crun-state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.print_bundle = self._bundle(workdir / "crun-print", PRINT_ARGV)
        self.sleep_bundle = self._bundle(workdir / "crun-sleep", SLEEP_ARGV)
        self._ids = itertools.count()
        self._running: str | None = None

    def _bundle(self, bundle: Path, argv: list[str]) -> Path:
        bundle.mkdir(parents=True, exist_ok=True)
        spec = [self.crun, "spec"] + (["--rootless"] if os.geteuid() != 0 else [])
        try:
            subprocess.run(spec, cwd=bundle, check=True, capture_output=True, timeout=30)
            config = json.loads((bundle / "config.json").read_text())
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            raise Unavailable(f"crun spec failed: {describe(exc)}") from exc
        config["process"]["terminal"] = False
        config["process"]["args"] = argv
        config["root"] = {"path": str(self.rootfs.path), "readonly": True}
        config["hostname"] = "hutch-bench"
        (bundle / "config.json").write_text(json.dumps(config, indent=1))
        return bundle

    def isolated_bundle(self, bundle: Path) -> Path:
        """The sleep bundle with what a hutch sandbox has beyond it and crun can be told
        to make: a network namespace of its own, and hutch's seccomp filter (compiled,
        as hutch hands it to crun).  The rest (slirp4netns, the firewall) is started
        beside it: :func:`benchmarks.concurrency.crun_isolated_round`."""
        from hutch.engine.isolation import seccompbpf

        self._bundle(bundle, SLEEP_ARGV)
        config = json.loads((bundle / "config.json").read_text())
        namespaces = config["linux"].setdefault("namespaces", [])
        if not any(n.get("type") == "network" for n in namespaces):
            namespaces.append({"type": "network"})
        config.setdefault("annotations", {}).update(seccompbpf.default_annotation())
        (bundle / "config.json").write_text(json.dumps(config, indent=1))
        return bundle

    def _base(self) -> list[str]:
        return [self.crun, "--root", str(self.state)]

    def _next_id(self) -> str:
        return f"hutch-bench-{os.getpid()}-{next(self._ids)}"

    def startup_command(self) -> str:
        return "crun run --bundle B ID  (spec --rootless, root.readonly)"

    def exec_command(self) -> str:
        return "crun exec ID true  (in a detached crun run -d of sleep infinity)"

    def startup_trial(self) -> Trial:
        def trial() -> Sample:
            argv = [*self._base(), "run", "--bundle", str(self.print_bundle), self._next_id()]
            return time_first_line(argv, expect="1")
        return trial

    def open_exec(self) -> Trial:
        cid = self._next_id()
        argv = [*self._base(), "run", "--detach", "--bundle", str(self.sleep_bundle), cid]
        # the container inherits crun's stdio: pipes would never reach EOF, so no pipes
        with tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=err, timeout=60, check=False)
            except (OSError, subprocess.SubprocessError) as exc:
                raise Unavailable(f"crun run --detach failed: {describe(exc)}") from exc
            self._running = cid
            if proc.returncode != 0:
                err.seek(0)
                raise Unavailable(f"crun run --detach exited {proc.returncode}: "
                                  f"{err.read().decode(errors='replace').strip()[-300:]}")

        def trial() -> Sample:
            return time_command([*self._base(), "exec", cid, "true"])
        return trial

    def close(self) -> None:
        if self._running is None:
            return
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([*self._base(), "delete", "--force", self._running],
                           capture_output=True, timeout=30, check=False)
        self._running = None


def _podman_runroot() -> Path:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK):
        return Path(xdg) / "hutch-bench-podman"
    return Path(f"/tmp/hutch-bench-podman-{os.getuid()}")


def default_podman_root() -> Path:
    """Where the benchmark keeps its own podman storage (kept between runs)."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path(os.path.expanduser("~")) / ".local" / "share"
    return base / "hutch-bench" / "podman"


class PodmanPeer(Peer):
    """Rootless ``podman run --rm`` of the shared rootfs, imported once as an image.

    The benchmark uses its own podman storage (``--root``) with the native ``overlay``
    driver, so it neither touches the user's images nor falls back to ``vfs`` (which copies
    the whole rootfs for every container and happens by default where ``/dev/fuse`` is
    closed to users).  The image tag carries the layer digest, so it is imported once.
    """

    name = "podman"

    def __init__(self, rootfs: Rootfs, storage: Path) -> None:
        super().__init__()
        podman = _require("podman")
        self.base = [podman, "--root", str(storage), "--runroot", str(_podman_runroot()),
                     "--storage-driver", "overlay"]
        self.tag = f"localhost/hutch-bench-rootfs:{rootfs.diff_id.partition(':')[2][:12]}"
        self.rootfs = rootfs
        self._running: str | None = None
        driver = check_output([*self.base, "info", "--format", "{{.Store.GraphDriverName}}"],
                              timeout=120).strip()
        self.notes.append(f"storage: {driver} driver in {storage}")
        self._import()

    def _import(self) -> None:
        exists = subprocess.run([*self.base, "image", "exists", self.tag],
                                capture_output=True, timeout=60, check=False)
        if exists.returncode == 0:
            self.notes.append(f"image {self.tag} (imported earlier)")
            return
        t0 = time.perf_counter()
        # tar inside podman's user namespace, so file owners keep their in-container ids
        tar = subprocess.Popen([*self.base, "unshare", "tar", "-C", str(self.rootfs.path),
                                "-cf", "-", "."], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
        assert tar.stdout is not None
        try:
            check_output([*self.base, "import", "-", self.tag], stdin=tar.stdout.fileno(),
                         timeout=900)
        finally:
            tar.stdout.close()
            tar_rc = tar.wait(timeout=60)
        if tar_rc != 0:
            subprocess.run([*self.base, "rmi", self.tag], capture_output=True, check=False)
            raise Unavailable(f"podman unshare tar of {self.rootfs.path} exited {tar_rc}")
        self.notes.append(f"image {self.tag} imported in {time.perf_counter() - t0:.1f} s")

    def startup_command(self) -> str:
        return f"podman run --rm {self.tag} python3 -c 'print(1)'"

    def exec_command(self) -> str:
        return "podman exec CID true  (CID: podman run -d IMAGE sleep infinity)"

    def startup_trial(self) -> Trial:
        argv = [*self.base, "run", "--rm", "--pull=never", self.tag, *PRINT_ARGV]

        def trial() -> Sample:
            return time_first_line(argv, expect="1")
        return trial

    def open_exec(self) -> Trial:
        cid = check_output([*self.base, "run", "-d", "--rm", "--pull=never", self.tag,
                            *SLEEP_ARGV], timeout=120).strip()
        self._running = cid

        def trial() -> Sample:
            return time_command([*self.base, "exec", cid, "true"])
        return trial

    def close(self) -> None:
        if self._running is None:
            return
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([*self.base, "rm", "--force", "--time", "0", self._running],
                           capture_output=True, timeout=60, check=False)
        self._running = None


class BwrapPeer(Peer):
    """``bwrap`` with the shared rootfs bind-mounted read-only as ``/`` and all namespaces."""

    name = "bwrap"

    def __init__(self, rootfs: Rootfs) -> None:
        super().__init__()
        self.argv = [_require("bwrap"), "--ro-bind", str(rootfs.path), "/", "--proc", "/proc",
                     "--dev", "/dev", "--unshare-all", *PRINT_ARGV]

    def startup_command(self) -> str:
        return "bwrap --ro-bind ROOTFS / --proc /proc --dev /dev --unshare-all python3 -c ..."

    def startup_trial(self) -> Trial:
        def trial() -> Sample:
            return time_first_line(self.argv, expect="1")
        return trial
