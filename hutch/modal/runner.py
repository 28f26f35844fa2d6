"""``python -m hutch.modal run PROGRAM.py[::NAME] [--ARG VALUE]...``: what ``modal run``
does for a program's local entrypoint, on hutch.

The program is imported as a module (its ``if __name__ == "__main__":`` block does not run,
as under ``modal run``), its app's ``@app.local_entrypoint()`` is called inside
``app.run()`` (so the sandboxes it leaves running are terminated after it), and the
entrypoint's parameters become options, typed by their annotations: ``--name VALUE`` for
``str``, ``int`` and ``float``, ``--flag``/``--no-flag`` for ``bool``.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

from hutch.exception import InvalidError
from hutch.sdk.app import App
from hutch.sdk.appentries import LocalEntrypoint


def _module(program: Path) -> Any:
    spec = importlib.util.spec_from_file_location(program.stem, program)
    if spec is None or spec.loader is None:
        raise InvalidError(f"{program} is not a Python program")
    module = importlib.util.module_from_spec(spec)
    sys.modules[program.stem] = module
    spec.loader.exec_module(module)
    return module


def _choose(module: Any, name: str, program: Path) -> tuple[App, LocalEntrypoint]:
    apps = [value for value in vars(module).values() if isinstance(value, App)]
    entries = {entry_name: (app, entry) for app in apps
               for entry_name, entry in app.registered_entrypoints.items()}
    functions = {fn for app in apps for fn in app.registered_functions}
    if name in functions:
        raise InvalidError(f"{name} is a Modal Function: hutch runs sandboxes, not Functions "
                           "(docs/modal.md)")
    if name:
        if name not in entries:
            raise InvalidError(f"{program} has no local entrypoint {name!r} (it has: "
                               f"{', '.join(sorted(entries)) or 'none'})")
        return entries[name]
    if len(entries) != 1:
        raise InvalidError(f"{program} has {len(entries)} local entrypoints: name one with "
                           f"{program}::NAME ({', '.join(sorted(entries)) or 'none'})")
    return next(iter(entries.values()))


def _arguments(entry: LocalEntrypoint, args: list[str]) -> dict[str, Any]:
    """The entrypoint's parameters from ``--name value`` options, as ``modal run`` takes
    them."""
    parser = argparse.ArgumentParser(prog=f"python -m hutch.modal run ...::{entry.name}")
    for param in inspect.signature(entry.raw_f).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        flag = "--" + param.name.replace("_", "-")
        names = [flag] + (["--" + param.name] if "_" in param.name else [])
        annotation = param.annotation if isinstance(param.annotation, type) \
            else {"bool": bool, "int": int, "float": float}.get(str(param.annotation), str)
        required = param.default is inspect.Parameter.empty
        if annotation is bool:
            parser.add_argument(*names, dest=param.name, action=argparse.BooleanOptionalAction,
                                default=None if required else param.default,
                                required=required)
        else:
            convert = annotation if annotation in (int, float, str) else str
            parser.add_argument(*names, dest=param.name, type=convert, required=required,
                                default=None if required else param.default)
    return vars(parser.parse_args(args))


def as_program(path: str, args: list[str]) -> Path:
    """Set ``sys.argv`` and ``sys.path[0]`` as ``python PATH ARGS`` sets them (the program's
    own directory first, unless ``-P``); exit 2 for a missing program."""
    program = Path(path)
    if not program.is_file():
        print(f"hutch.modal: no such program: {program}", file=sys.stderr)
        raise SystemExit(2)
    sys.argv = [path, *args]
    if not sys.flags.safe_path:
        sys.path[0] = str(program.resolve().parent)
    return program


def run(spec: str, args: list[str]) -> None:
    path, _, name = spec.partition("::")
    program = as_program(path, args)
    app, entry = _choose(_module(program), name, program)
    kwargs = _arguments(entry, args)
    with app.run():
        entry(**kwargs)
