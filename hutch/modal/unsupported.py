"""Modal's names for what hutch does not do (Functions, classes, dicts, queues, clusters,
workspaces...): they exist, so a program that names them imports and runs, and using one
raises :class:`~hutch.exception.InvalidError` naming it.

Why not leave them out: a missing name is an ``AttributeError`` at import time, which
stops a program that only uses sandboxes because it also mentions ``modal.Dict``.  A
placeholder class can still be named in ``isinstance`` checks and type hints; calling it,
or any of its attributes, raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from hutch.exception import InvalidError

#: Why hutch has no such thing, by the kind of feature.
WHY = {
    "functions": "hutch runs sandboxes, not Modal Functions, classes or web endpoints",
    "storage": "hutch has sandboxes, images, volumes and secrets, not Modal's dicts, "
               "queues or network file systems",
    "cloud": "hutch runs on this machine: Modal's cloud features (clusters, regions, "
             "proxies, workspaces, environments, billing) do not exist here",
    "client": "it is a part of Modal's own client (`modal.enable_output()` shows hutch's "
              "output)",
    "memory": "no memory snapshot can be taken here (`Sandbox._experimental_snapshot()` "
              "gives the reason the engine measured; docs/limits.md, \"Memory snapshots\")",
}


def refuse(name: str, kind: str) -> NoReturn:
    raise InvalidError(f"modal.{name} is not supported by hutch: {WHY[kind]} "
                       "(docs/modal.md)")


class _Refusing(type):
    """The metaclass of a placeholder: calling it or reading an attribute refuses."""

    _modal_name: str
    _modal_kind: str

    def __call__(cls, *args: Any, **kwargs: Any) -> NoReturn:
        refuse(cls._modal_name, cls._modal_kind)

    def __getattr__(cls, attribute: str) -> NoReturn:
        if attribute.startswith("_"):  # probes (hasattr, inspect, mock, pickle) see nothing
            raise AttributeError(attribute)
        refuse(f"{cls._modal_name}.{attribute}", cls._modal_kind)


def placeholder_class(name: str, kind: str) -> type:
    """A class named ``name`` that refuses every use but naming it."""
    return _Refusing(name, (), {"_modal_name": name, "_modal_kind": kind,
                                "__module__": "hutch.modal",
                                "__doc__": f"Modal's ``{name}``: {WHY[kind]}."})


def placeholder_function(name: str, kind: str) -> Callable[..., NoReturn]:
    """A function named ``name`` that refuses when called."""
    def refused(*args: Any, **kwargs: Any) -> NoReturn:
        refuse(name, kind)

    refused.__name__ = refused.__qualname__ = name.rpartition(".")[2]
    refused.__module__ = "hutch.modal"  # where pickle finds it again (modal.<name>)
    refused.__doc__ = f"Modal's ``{name}``: {WHY[kind]}."
    return refused
