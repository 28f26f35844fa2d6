"""``python -m hutch.modal PROGRAM.py [ARGS]`` (or ``-m MODULE [ARGS]``): run a program
written for Modal with ``import modal`` resolved to hutch.

As ``python PROGRAM.py`` would run it: ``sys.argv`` is the program and its arguments, it
runs as ``__main__`` with its own directory first on ``sys.path``.  ``HUTCH_AS_MODAL=1`` is
set for the processes it starts, so theirs resolve ``modal`` to hutch too.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from hutch.modal import aliasing

USAGE = "usage: python -m hutch.modal PROGRAM.py [ARGS...] | -m MODULE [ARGS...]"


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help") or (argv[0] == "-m" and len(argv) < 2):
        print(USAGE, file=sys.stderr if not argv or argv[0] == "-m" else sys.stdout)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    aliasing.install()
    os.environ[aliasing.ENV] = "1"
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]  # (sys.path[0] is the working directory, as for -m)
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return
    program = Path(argv[0])
    if not program.exists():
        print(f"hutch.modal: no such program: {program}", file=sys.stderr)
        raise SystemExit(2)
    sys.argv = list(argv)
    sys.path[0] = str(program.resolve().parent)  # as `python PROGRAM.py` sets it
    runpy.run_path(str(program), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
