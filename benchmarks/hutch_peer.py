"""hutch itself as a contender, driven through its public SDK like any user would.

Startup trial: ``hutch.Sandbox.create("python3", "-c", "print(1)")`` then the first line of
``sb.stdout``, timed from before ``create`` to that line.  Two sub-timings go with it:
``create_return`` (when ``create`` returned: the engine accepted and set up the sandbox) and
``exit`` (when ``sb.wait()`` saw it end).  Exec trial: ``sb.exec("true").wait()`` on a
sandbox running ``sleep infinity``.

The engine's own description (``GET /v1/engine``: OCI runtime, user-namespace mode,
data dir, default image) goes into the report, with the round trip of a no-op request
(``GET /v1/health``) as the floor that every SDK call pays.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import Sample, Stats, Trial, TrialError, Unavailable, describe
from benchmarks.peers import PRINT_ARGV, SLEEP_ARGV, Peer


class HutchPeer(Peer):
    """The hutch SDK against the user's engine (started on first use if not running)."""

    name = "hutch"

    def __init__(self, sandbox_timeout: float = 120.0) -> None:
        super().__init__()
        try:
            import hutch
            from hutch.sdk.transport import request_blocking
        except ImportError as exc:
            raise Unavailable(f"cannot import hutch: {exc}") from exc
        self._hutch = hutch
        self._request = request_blocking
        self.timeout = sandbox_timeout
        try:
            self.engine: dict[str, Any] = request_blocking("GET", "/v1/engine")
        except Exception as exc:  # the SDK's errors, or anything below them
            raise Unavailable(f"the hutch engine does not answer: {describe(exc)}") from exc
        self.version: str = getattr(hutch, "__version__", "?")
        self._sleeper: Any = None
        self.notes.append(
            f"engine {self.engine.get('version')}, runtime {self.engine.get('runtime')}, "
            f"userns {self.engine.get('userns_mode')}"
        )

    @property
    def data_dir(self) -> Path:
        return Path(self.engine["data_dir"])

    @property
    def image(self) -> str:
        image: str = self.engine["default_image"]
        return image

    def request_rtt(self, runs: int = 20) -> Stats:
        """Round trip of ``GET /v1/health`` over the SDK's connection: the per-call floor."""
        samples = []
        for _ in range(runs + 2):
            t0 = time.perf_counter()
            self._request("GET", "/v1/health")
            samples.append(time.perf_counter() - t0)
        return Stats.of(samples[2:])

    def startup_command(self) -> str:
        return "Sandbox.create('python3', '-c', 'print(1)'); first line of sb.stdout"

    def exec_command(self) -> str:
        return "sb.exec('true').wait()  (sb running sleep infinity)"

    def reserve(self, size: int | None = None) -> dict[str, int]:
        """The engine's reserve (resized to ``size`` first, when given)."""
        if size is not None:
            answer: dict[str, int] = self._request("PUT", "/v1/engine/reserve",
                                                   json_body={"size": size})
            return answer
        info: dict[str, int] = self._request("GET", "/v1/engine")["reserve"]
        return info

    def await_reserve(self, timeout: float = 30.0) -> None:
        """Untimed: until the reserve holds what it keeps (as hutch-pool waits for its
        pool), so that each trial finds what a create on an idle engine finds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.reserve()
            if info["ready"] >= info["size"]:
                return
            time.sleep(0.02)

    def make_kept(self) -> None:
        """Untimed, once: create this configuration as often as the reserve counts
        (its last 8 creates), so that it is the one kept whatever ran on the engine
        before (another process's creates would otherwise keep theirs for a while)."""
        for _ in range(8):
            self._hutch.Sandbox.create("true", timeout=self.timeout)

    def startup_trial(self) -> Trial:
        sandbox_cls = self._hutch.Sandbox
        self.make_kept()

        def trial() -> Sample:
            self.await_reserve()
            t0 = time.perf_counter()
            sb = sandbox_cls.create(*PRINT_ARGV, timeout=self.timeout)
            t1 = time.perf_counter()
            first = None
            for line in sb.stdout:
                first = line
                break
            t2 = time.perf_counter()
            sb.wait(raise_on_termination=False)
            t3 = time.perf_counter()
            if first is None or first.strip() != "1":
                raise TrialError(f"{sb.object_id}: first stdout line {first!r}, "
                                 f"stderr {sb.stderr.read()[-300:]!r}")
            if sb.returncode != 0:
                raise TrialError(f"{sb.object_id} exited {sb.returncode}")
            return Sample(t2 - t0, {"create_return": t1 - t0, "exit": t3 - t0})
        return trial

    def open_exec(self) -> Trial:
        try:
            sb = self._hutch.Sandbox.create(*SLEEP_ARGV, timeout=3600)
        except Exception as exc:
            raise Unavailable(f"cannot start a sandbox: {describe(exc)}") from exc
        self._sleeper = sb

        def trial() -> Sample:
            t0 = time.perf_counter()
            code = sb.exec("true").wait()
            t1 = time.perf_counter()
            if code != 0:
                raise TrialError(f"exec true in {sb.object_id} exited {code}")
            return Sample(t1 - t0)
        return trial

    def close(self) -> None:
        if self._sleeper is None:
            return
        with contextlib.suppress(Exception):
            self._sleeper.terminate(grace_period=1.0)
        self._sleeper = None


class HutchColdPeer(HutchPeer):
    """hutch without its reserve: the same trial as ``hutch``, with the engine's reserve
    emptied first (``PUT /v1/engine/reserve`` size 0, untimed) and refilled after, so that
    the create makes its container as a create of a configuration not used before does."""

    name = "hutch-cold"

    def __init__(self, sandbox_timeout: float = 120.0) -> None:
        super().__init__(sandbox_timeout)
        self.size = self.reserve()["size"]

    def startup_command(self) -> str:
        return super().startup_command() + "  (engine reserve emptied first)"

    def startup_trial(self) -> Trial:
        inner = super().startup_trial()

        def trial() -> Sample:
            self.reserve(0)
            try:
                return inner()
            finally:
                self.reserve(self.size)
        return trial

    def await_reserve(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.reserve()["ready"] and time.monotonic() < deadline:
            time.sleep(0.02)  # the waiting sandboxes end: nothing of them is left to take

    def open_exec(self) -> Trial:
        raise Unavailable("execs do not depend on the reserve: see hutch")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.reserve(self.size)


class HutchPoolPeer(HutchPeer):
    """hutch with a warm pool: ``app.warm_pool(size=2)``, then the same trial, whose
    ``Sandbox.create(app=app)`` takes a pooled sandbox and runs ``python3 -c 'print(1)'``
    in it with ``exec`` (a pooled sandbox has the default entrypoint).  Between rounds the
    trial waits until the pool is full again, untimed."""

    name = "hutch-pool"

    def __init__(self, sandbox_timeout: float = 120.0) -> None:
        super().__init__(sandbox_timeout)
        try:
            self.app = self._hutch.App.lookup("hutch-bench-pool", create_if_missing=True)
            self.pool: Any = self.app.warm_pool(size=2)
            self.pool.wait_ready(timeout=120)
        except Exception as exc:
            raise Unavailable(f"cannot fill a warm pool: {describe(exc)}") from exc

    def startup_command(self) -> str:
        return ("app.warm_pool(size=2); Sandbox.create(app=app); sb.exec('python3', '-c', "
                "'print(1)'); first line of its stdout")

    def startup_trial(self) -> Trial:
        sandbox_cls = self._hutch.Sandbox

        def trial() -> Sample:
            self.pool.wait_ready(timeout=120)
            t0 = time.perf_counter()
            sb = sandbox_cls.create(app=self.app, timeout=self.timeout)
            t1 = time.perf_counter()
            p = sb.exec(*PRINT_ARGV)
            first = next(iter(p.stdout), "")
            t2 = time.perf_counter()
            sb.terminate()
            if first.strip() != "1":
                raise TrialError(f"{sb.object_id}: first stdout line {first!r}")
            return Sample(t2 - t0, {"create_return": t1 - t0})
        return trial

    def open_exec(self) -> Trial:
        raise Unavailable("a pooled sandbox runs execs as any other: see hutch")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.pool.delete()
