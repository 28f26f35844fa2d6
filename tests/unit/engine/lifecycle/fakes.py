"""Fakes for the sandbox manager's unit tests: a runtime, an image service and a launch
that start each sandbox's entrypoint as a host process.

The launch records the entrypoint's exit in ``<runtime>/exits/<pid>`` from a thread, as
the pause process (the sandboxes' subreaper) does, with its code (128+n for signal n), so
the manager reads outcomes the way it does in production.  The runtime keeps its
containers' pids across managers, as crun's state directory outlives a daemon, so a second
manager on the same directories is a restarted daemon.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from hutch.engine.commands.zygote import ForkServer
from hutch.engine.isolation.cgroups import CgroupHost
from hutch.engine.lifecycle.launch import LaunchPlan
from hutch.engine.lifecycle.manager import SandboxManager
from hutch.engine.runtime.spawn import spawn
from hutch.engine.storage.store import Store
from hutch.imagebuild.layout import Image

IMAGE = Image(ref="hutch/test", digest="sha256:" + "e" * 64,
              layer_dirs=[Path("/layers/" + "f" * 64)])

Launch = Callable[[Any, LaunchPlan], Awaitable[tuple[int, trio.lowlevel.FdStream]]]


class FakeRuntime:
    """Deletes nothing, names each container's init pid (``state``), and runs an exec's
    process on the host (no fork server here)."""

    name = "fake"

    def __init__(self) -> None:
        self.deleted: list[str] = []
        self.pids: dict[str, int] = {}
        #: pid -> set once its exit is recorded
        self.recorded: dict[int, threading.Event] = {}

    async def delete(self, sandbox_id: str, force: bool = False) -> None:
        self.deleted.append(sandbox_id)
        self.pids.pop(sandbox_id, None)

    async def state(self, sandbox_id: str) -> dict[str, Any] | None:
        pid = self.pids.get(sandbox_id)
        return None if pid is None else {"id": sandbox_id, "pid": pid, "status": "running"}

    async def exec(self, cid: str, process_json: Path, *, pid_file: Path, stdin: bool,
                   stdout: bool = True, stderr: bool = True, prefix: Any = ()) -> Any:
        process = json.loads(process_json.read_text())  # (its env alone, as in a sandbox)
        spawned = spawn(["env", "-i", *process["env"], *process["args"]], stdin=stdin,
                        stdout=stdout, stderr=stderr)
        pid_file.write_text(str(spawned.pid))
        return spawned


class FakeImages:
    async def resolve(self, ref: str | None) -> Image:
        return IMAGE


def host_launch(runtime: FakeRuntime, exits: Path, fail: bool = False) -> Launch:
    """Start the plan's entrypoint on the host; record its exit as the pause process does."""
    async def launch(_: Any, __: Any, plan: LaunchPlan) -> tuple[int, trio.lowlevel.FdStream]:
        if fail:
            raise OSError("the runtime could not start it")
        plan.dirs.execs.mkdir(parents=True)  # (the bundle's, which execs write into)
        plan.dirs.merged.mkdir(parents=True)
        proc = subprocess.Popen(plan.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        runtime.pids[plan.sandbox_id] = proc.pid
        recorded = runtime.recorded[proc.pid] = threading.Event()

        def reap() -> None:
            code = proc.wait()
            exits.mkdir(parents=True, exist_ok=True)
            partial = exits / f".{proc.pid}.part"  # whole or not at all, as the pause
            partial.write_text(json.dumps(  # process writes it: the manager polls for it
                {"code": 128 - code if code < 0 else code}))
            partial.replace(exits / str(proc.pid))
            recorded.set()

        threading.Thread(target=reap, daemon=True).start()
        return proc.pid, trio.lowlevel.FdStream(os.open(os.devnull, os.O_WRONLY))

    return launch


def make_manager(tmp_path: Path, nursery: trio.Nursery, runtime: FakeRuntime | None = None,
                 fail: bool = False) -> SandboxManager:
    """A manager on ``tmp_path``'s state; another on the same path and ``runtime`` is the
    same engine restarted."""
    runtime = runtime if runtime is not None else FakeRuntime()
    runtime_dir = tmp_path / "run"
    runtime_dir.mkdir(exist_ok=True)
    (runtime_dir / "exits").mkdir(exist_ok=True)
    manager = SandboxManager(
        store=Store(tmp_path / "state.db"), images=FakeImages(),  # type: ignore[arg-type]
        runtime=runtime, data_dir=tmp_path / "data",  # type: ignore[arg-type]
        runtime_dir=runtime_dir, devpts_gid=False, nursery=nursery,
        cgroups=CgroupHost(version=2), fork_server=ForkServer(0, None),  # (never started)
        userns_mode="single", user="no-such-user-for-slots")
    manager.launch = host_launch(runtime, runtime_dir / "exits", fail)  # type: ignore[assignment]
    return manager
