"""Modal's client interface, served by hutch: what ``import modal`` gives once hutch is
installed as modal (:mod:`hutch.modal.aliasing`).

Every name resolves on first use, from :mod:`hutch.modal.names`, so importing ``modal``
costs no more than importing ``hutch``; ``modal.Sandbox`` is ``hutch.Sandbox`` itself.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from hutch import exception
from hutch._version import __version__
from hutch.modal import unsupported
from hutch.modal.names import SUBMODULES, TOP, Where


def resolve(qualified: str, where: Where) -> Any:
    """The object ``where`` names (``qualified``: its Modal name, for refusals)."""
    if where.startswith("!"):
        kind = where[1:]
        name = qualified.rpartition(".")[2]
        if name[:1].isupper():
            return unsupported.placeholder_class(qualified, kind)
        return unsupported.placeholder_function(qualified, kind)
    module, _, attribute = where.partition(":")
    return getattr(importlib.import_module(module), attribute)


class Submodule(types.ModuleType):
    """``modal.<name>``: its names resolved on first use and then kept."""

    def __init__(self, name: str, table: dict[str, Where]) -> None:
        super().__init__(f"hutch.modal.{name}", f"Modal's ``modal.{name}``, served by hutch.")
        self._table = table
        self._short = name

    def __getattr__(self, attribute: str) -> Any:
        where = self._table.get(attribute)
        if where is None:
            raise AttributeError(f"module 'modal.{self._short}' has no attribute "
                                 f"{attribute!r}")
        if TOP.get(attribute) == where:  # the same object as ``modal.<attribute>``
            value = top(attribute)
        else:
            value = resolve(f"{self._short}.{attribute}", where)
        setattr(self, attribute, value)
        return value

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._table))


def submodule(name: str) -> types.ModuleType:
    """The module ``modal.<name>`` (``hutch.modal.<name>``), made once."""
    if name == "exception":
        return exception
    full = f"hutch.modal.{name}"
    made = sys.modules.get(full)
    if made is None:
        made = sys.modules[full] = Submodule(name, SUBMODULES[name])
    return made


def top(name: str) -> Any:
    """``modal.<name>``, resolved once."""
    found = globals().get(name)
    if found is None:
        found = globals()[name] = resolve(name, TOP[name])
    return found


def __getattr__(name: str) -> Any:
    if name in TOP:
        return top(name)
    if name in SUBMODULES:
        value = submodule(name)
    else:
        raise AttributeError(f"module 'modal' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(TOP) | set(SUBMODULES))


__all__ = ["__version__", "exception", *sorted(TOP)]
