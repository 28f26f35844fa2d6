"""Benchmarks of hutch against its peers on the same machine and the same root filesystem.

``python -m benchmarks`` runs the startup benchmark: the latency from "start a sandbox" to
the first line of output of ``python3 -c 'print(1)'``, and the round trip of ``exec true``
in a running sandbox, for hutch, raw ``crun``, rootless ``podman`` and ``bwrap``.  See
``benchmarks/README.md`` for how to run it and how to read the results.

Modules:

- :mod:`benchmarks.harness`: statistics, the interleaved timing loop, subprocess timing.
- :mod:`benchmarks.environment`: the shared rootfs (hutch's base image layer) and machine facts.
- :mod:`benchmarks.peers`: one adapter per contender (hutch, crun, podman, bwrap).
- :mod:`benchmarks.report`: ``startup.json``, ``startup.md`` and ``startup.png``.
- :mod:`benchmarks.cli`: the command line that ties them together.
"""

from __future__ import annotations

__all__: list[str] = []
