"""crun, the preferred runtime: a C binary that starts a container in about 10 ms here."""

from __future__ import annotations

from hutch.engine.runtime.cli import CLIRuntime


class CrunRuntime(CLIRuntime):
    name = "crun"
    binary = "crun"
