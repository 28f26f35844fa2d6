"""``Image.run_function``: a Python function run inside the image's build, as Modal's.

Modal runs the function in a build container with the image's Python and keeps what it
wrote as a layer (downloading model weights at build time is the usual use).  hutch does
the same with a build step, and ships the function *by source*: the image need not have
hutch (or Modal, or cloudpickle) installed, and the script that declares the function
(which imports ``modal`` at its top) is never imported there.

What travels is a small program (:func:`program`): the function's own source (decorators
dropped), the functions and classes of its module that it calls, by source too, and the
rest of the module-level names it uses, rebuilt: modules as ``import`` lines, constants
(numbers, strings, and lists, tuples, dicts and sets of them) by ``repr``.  ``args`` and
``kwargs`` travel as a pickle (of plain data).  Anything else the function reaches at
module level (an open file, an ``App``) is an :class:`InvalidError` naming it, before
anything runs: the fix is to import or create it inside the function, as Modal's docs say.
The program is part of the step, so changing the function rebuilds from that step on.
"""

from __future__ import annotations

import base64
import dis
import inspect
import pickle
import textwrap
import types
from collections.abc import Callable
from typing import Any

from hutch.exception import InvalidError

_PLAIN = (int, float, complex, str, bytes, bool, type(None))


def _plain(value: object, depth: int = 0) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if depth < 8 and isinstance(value, list | tuple | set | frozenset):
        return all(_plain(v, depth + 1) for v in value)
    if depth < 8 and isinstance(value, dict):
        return all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in value.items())
    return False


def _source(obj: Callable[..., Any] | type, what: str) -> str:
    try:
        text = textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError) as exc:
        raise InvalidError(f"Image.run_function: the source of {what} cannot be read "
                           f"({exc}); define it in a file") from None
    lines = text.splitlines()
    while lines and lines[0].lstrip().startswith("@"):  # @app.function() and the like
        lines.pop(0)
        while lines and lines[0].startswith((" ", "\t", ")")):
            lines.pop(0)
    return "\n".join(lines) + "\n"


def _names_used(code: types.CodeType) -> set[str]:
    """The global names ``code`` (and the code nested in it) reads: not attribute names
    (``ns.app`` reads ``ns``, not a global ``app``)."""
    names = {i.argval for i in dis.get_instructions(code)
             if i.opname in ("LOAD_GLOBAL", "LOAD_NAME") and isinstance(i.argval, str)}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_used(const)
    return names


def program(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """A Python program that defines ``fn`` (and what it needs) and calls it."""
    if not isinstance(fn, types.FunctionType):
        raise InvalidError(f"Argument to Image.run_function must be a function, not "
                           f"{type(fn).__name__}.")
    if fn.__name__ == "<lambda>":
        raise InvalidError("Image.run_function does not support lambda functions.")
    if fn.__closure__:
        raise InvalidError(f"Image.run_function: {fn.__qualname__} uses variables of the "
                           "function that defines it; define it at module level")
    try:
        payload = pickle.dumps((tuple(args), dict(kwargs)), protocol=4)
    except Exception as exc:
        raise InvalidError(f"Image.run_function: args and kwargs must be plain data "
                           f"(they are pickled): {exc}") from None
    header: list[str] = []
    bodies: list[str] = []
    seen: set[str] = set()
    todo: list[types.FunctionType | type] = [fn]
    module = fn.__module__
    while todo:
        obj = todo.pop()
        bodies.insert(0, _source(obj, obj.__qualname__))
        codes = [obj.__code__] if isinstance(obj, types.FunctionType) else [
            v.__code__ for v in vars(obj).values() if isinstance(v, types.FunctionType)]
        for name in sorted(set().union(*(_names_used(c) for c in codes))):
            if name in seen or name not in fn.__globals__:
                continue
            seen.add(name)
            value = fn.__globals__[name]
            if isinstance(value, types.ModuleType):
                header.append(f"import {value.__name__} as {name}" if value.__name__ != name
                              else f"import {name}")
            elif isinstance(value, types.FunctionType | type) and \
                    getattr(value, "__module__", None) == module:
                todo.append(value)
            elif isinstance(value, types.FunctionType | type | types.BuiltinFunctionType):
                owner = getattr(value, "__module__", None)
                if not owner or owner == "__main__":
                    raise InvalidError(f"Image.run_function: {fn.__qualname__} uses {name}, "
                                       "which cannot be brought into the build")
                header.append(f"from {owner} import {value.__name__} as {name}")
            elif _plain(value):
                header.append(f"{name} = {value!r}")
            else:
                raise InvalidError(
                    f"Image.run_function: {fn.__qualname__} uses the module-level "
                    f"{name} ({type(value).__name__}), which does not travel into the build; "
                    "create or import it inside the function")
    encoded = base64.b64encode(payload).decode()
    call = (f"import base64 as _b, pickle as _p\n_args, _kwargs = _p.loads(_b.b64decode("
            f"{encoded!r}))\n{fn.__name__}(*_args, **_kwargs)\n")
    return "\n".join([*header, "", *bodies, call])


def command(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
            include_source: bool) -> str:
    """The build step's shell command: the image's ``python3`` runs the program, passed
    in base64 so no quoting can break it (``include_source=False``: the function is
    imported from a module the image has, as Modal does then)."""
    if include_source:
        text = program(fn, args, kwargs)
    else:
        if not isinstance(fn, types.FunctionType) or fn.__module__ == "__main__":
            raise InvalidError("Image.run_function with include_source=False needs a "
                               "function of a module the image has (not __main__)")
        payload = base64.b64encode(pickle.dumps((tuple(args), dict(kwargs)), protocol=4))
        text = (f"import base64 as _b, pickle as _p\nfrom {fn.__module__} import "
                f"{fn.__qualname__} as _f\n_a, _k = _p.loads(_b.b64decode({payload!r}))\n"
                "_f(*_a, **_k)\n")
    encoded = base64.b64encode(text.encode()).decode()
    return (f"python3 -c 'import base64; exec(compile(base64.b64decode(\"{encoded}\"), "
            f"\"run_function {fn.__qualname__}\", \"exec\"))'")
