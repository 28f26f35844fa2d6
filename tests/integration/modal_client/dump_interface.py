"""Print, as JSON, the interface of the Modal client installed in this environment: for each
module of SCOPE, each public name; for classes their public members; for callables their
parameters.  Run by tests/integration/test_modal_interface.py with a scratch environment's
Python (Modal's client installed from PyPI), and with hutch's, installed as modal."""

from __future__ import annotations

import enum
import importlib
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any

#: Modal's modules whose names concern sandboxes, images, volumes, secrets and apps, and
#: the classes among them whose members are compared too.
SCOPE = ["modal", "modal.app", "modal.image", "modal.sandbox", "modal.container_process",
         "modal.io_streams", "modal.stream_type", "modal.secret", "modal.volume",
         "modal.output", "modal.exception", "modal.config", "modal.types"]
CLASSES = {"App", "Image", "Sandbox", "Secret", "Volume", "ContainerProcess", "StreamReader",
           "StreamWriter", "Probe", "Tunnel", "StreamType"}
#: Names of Modal's modules that are not its interface (its own imports, type variables).
SKIP = {"T", "P", "CLS_T", "ReturnType", "OriginalReturnType", "Any", "Optional",
        "TypeVar", "annotations"}


def parameters(obj: Any) -> list[list[Any]] | None:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    return [[p.name, p.kind.name, p.default is not inspect.Parameter.empty]
            for p in signature.parameters.values() if p.name not in ("self", "cls")]


def describe(obj: Any, members: bool) -> dict[str, Any]:
    if inspect.ismodule(obj):
        return {"kind": "module"}
    if inspect.isclass(obj):
        found: dict[str, Any] = {"kind": "class", "enum": issubclass(obj, enum.Enum),
                                 "exception": issubclass(obj, BaseException)}
        if members:
            found["members"] = {}
            for name in dir(obj):
                if name.startswith("_") or name in dir(object):
                    continue
                try:
                    member = inspect.getattr_static(obj, name)
                except AttributeError:
                    continue
                kind = "property" if isinstance(member, property) else "other"
                if callable(getattr(obj, name, None)) and kind != "property":
                    kind = "callable"
                found["members"][name] = {
                    "kind": kind,
                    "parameters": parameters(getattr(obj, name)) if kind == "callable"
                    else None}
            try:  # attributes its instances get in __init__ (self.stdout = ...)
                source = inspect.getsource(obj.__init__)
            except (OSError, TypeError):
                source = ""
            for name in re.findall(r"\bself\.([a-z]\w*)\s*(?::[^=\n]*)?=[^=]", source):
                found["members"].setdefault(name, {"kind": "other", "parameters": None})
            found["parameters"] = parameters(obj)
        return found
    if callable(obj):
        return {"kind": "callable", "parameters": parameters(obj)}
    return {"kind": "value"}


def main(wanted: dict[str, list[str]] | None) -> None:
    """``wanted``: describe these names of these modules (hutch's side, which has Modal's
    names but not its module layout), else every public name of SCOPE."""
    out: dict[str, dict[str, Any]] = {}
    for module_name in SCOPE if wanted is None else sorted(wanted):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            out[module_name] = {}
            continue
        if wanted is not None:
            names = wanted[module_name]
        else:  # its __all__, or what the module defines itself
            names = getattr(module, "__all__", None) or [
                n for n, v in vars(module).items() if not n.startswith("_")
                and (getattr(v, "__module__", None) or "").startswith(module_name)]
        out[module_name] = {}
        for name in sorted(set(names) - SKIP):
            try:
                value = getattr(module, name)
            except AttributeError:
                continue
            out[module_name][name] = describe(value, name in CLASSES)
    json.dump(out, sys.stdout, indent=1, sort_keys=True)


if __name__ == "__main__":
    main(json.loads(Path(sys.argv[1]).read_text()) if len(sys.argv) > 1 else None)
