"""runc, the fallback runtime: slower to start than crun, but it runs on hybrid cgroup hosts."""

from __future__ import annotations

from hutch.engine.runtime.cli import CLIRuntime


class RuncRuntime(CLIRuntime):
    name = "runc"
    binary = "runc"
