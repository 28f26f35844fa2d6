"""``python -m hutch.modal PROGRAM.py [ARGS]`` (or ``-m MODULE [ARGS]``): run a program
written for Modal with ``import modal`` resolved to hutch; ``run PROGRAM.py[::NAME]``
calls its local entrypoint as ``modal run`` does (:mod:`hutch.modal.runner`).

As ``python PROGRAM.py`` would run it: ``sys.argv`` is the program and its arguments, it
runs as ``__main__`` with its own directory first on ``sys.path``.  ``HUTCH_AS_MODAL=1`` is
set for the processes it starts, so theirs resolve ``modal`` to hutch too.
"""

from __future__ import annotations

import builtins
import os
import runpy
import sys
import types
from pathlib import Path

from hutch.modal import aliasing, runner

USAGE = ("usage: python -m hutch.modal PROGRAM.py [ARGS...] | -m MODULE [ARGS...] "
         "| run PROGRAM.py[::ENTRYPOINT] [--ARG VALUE...]")


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help") or (argv[0] == "-m" and len(argv) < 2):
        print(USAGE, file=sys.stderr if not argv or argv[0] == "-m" else sys.stdout)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    aliasing.install()
    os.environ[aliasing.ENV] = "1"
    if argv[0] == "run" and len(argv) > 1:  # modal run PROGRAM.py[::NAME] [ARGS]
        runner.run(argv[1], argv[2:])
        return
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]  # (sys.path[0] is the working directory, as for -m)
        # what `python -m MODULE` itself calls: its __main__ stays in sys.modules
        runpy._run_module_as_main(argv[1], alter_argv=True)  # type: ignore[attr-defined]
        return
    run_as_main(runner.as_program(argv[0], argv[1:]))


def run_as_main(program: Path) -> None:
    """Run ``program`` as the ``__main__`` module, which stays in ``sys.modules`` after it
    (threads and ``atexit`` handlers may still pickle its classes), as Python does."""
    main_module = types.ModuleType("__main__")
    main_module.__file__ = os.path.abspath(program)
    main_module.__dict__["__builtins__"] = builtins
    main_module.__cached__ = None  # type: ignore[attr-defined]
    sys.modules["__main__"] = main_module
    code = compile(program.read_bytes(), main_module.__file__, "exec")
    exec(code, main_module.__dict__)


if __name__ == "__main__":
    main(sys.argv[1:])
