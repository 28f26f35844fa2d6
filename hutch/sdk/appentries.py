"""What a Modal program declares on its ``App`` besides sandboxes: local entrypoints, which
hutch runs (``python -m hutch.modal run PROGRAM.py``, as ``modal run`` does), and
Functions, which it does not.

Why keep Functions at all: a program that defines one beside its sandbox code still
imports, and its ``.local()`` runs as in Modal; what would run it in Modal's cloud
(``.remote()``, ``.spawn()``, ``.map()``...) raises ``InvalidError`` naming the call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from hutch.exception import InvalidError

#: Why hutch runs no Functions.
NO_FUNCTIONS = "hutch runs sandboxes, not Modal Functions (docs/modal.md)"


class LocalEntrypoint:
    """A function of the program that ``python -m hutch.modal run`` calls (Modal's
    ``@app.local_entrypoint()``); calling it calls the function."""

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self.raw_f = fn
        self.name = name
        self.__doc__ = fn.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.raw_f(*args, **kwargs)

    def __repr__(self) -> str:
        return f"LocalEntrypoint({self.name!r})"


class UnrunnableFunction:
    """A Modal Function declared with ``@app.function()``: ``.local()`` (and a plain call)
    run it here; everything that would run it remotely refuses."""

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self.raw_f = fn
        self.name = name
        self.__doc__ = fn.__doc__

    def local(self, *args: Any, **kwargs: Any) -> Any:
        return self.raw_f(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.raw_f(*args, **kwargs)

    def _refuse(self, call: str) -> NoReturn:
        raise InvalidError(f"{self.name}.{call}(): {NO_FUNCTIONS}")

    def remote(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("remote")

    def remote_gen(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("remote_gen")

    def spawn(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("spawn")

    def map(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("map")

    def starmap(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("starmap")

    def for_each(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("for_each")

    def spawn_map(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("spawn_map")

    def get_web_url(self) -> NoReturn:
        self._refuse("get_web_url")

    def __repr__(self) -> str:
        return f"Function({self.name!r}, not runnable here)"


def refuse(what: str) -> NoReturn:
    raise InvalidError(f"{what}: {NO_FUNCTIONS}")
