"""``import modal`` resolved to hutch, opt-in: a meta path finder for ``modal`` and
``modal.*``.

Why a finder and not a ``modal`` package: a real Modal client installed beside hutch must
stay untouched unless the user asks (``python -m hutch.modal``, ``HUTCH_AS_MODAL=1`` or
:func:`install`).  Each ``modal.X`` is the very module ``hutch.modal.X`` (or
``hutch.exception``), not a copy, so ``except modal.exception.NotFoundError`` catches what
hutch raises and ``modal.Sandbox is hutch.Sandbox``.  Only Modal's own module names are
served (:data:`hutch.modal.names.SUBMODULES`); any other ``modal.X`` is not found.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import types
from collections.abc import Sequence

import hutch.modal
from hutch.modal.names import SUBMODULES

#: The environment variable that turns the alias on in every Python process (through the
#: ``hutch-as-modal.pth`` file installed with hutch).
ENV = "HUTCH_AS_MODAL"

class _Loader(importlib.abc.Loader):
    def __init__(self, module: types.ModuleType) -> None:
        self.module = module

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return self.module

    def exec_module(self, module: types.ModuleType) -> None:
        pass  # (already executed, as the hutch module it is)


class ModalFinder(importlib.abc.MetaPathFinder):
    """Finds ``modal`` and ``modal.*`` as hutch's modules."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target_module: types.ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "modal" and not fullname.startswith("modal."):
            return None
        if fullname == "modal":
            module: types.ModuleType = hutch.modal
        elif (name := fullname[len("modal."):]) in SUBMODULES or name == "exception":
            module = hutch.modal.submodule(name)
        else:
            # Not one of Modal's modules hutch serves: stop here, or the search would go on
            # in hutch.modal's own folder and load hutch's modules under Modal's names.
            raise ModuleNotFoundError(f"No module named {fullname!r} (hutch serves "
                                      f"{', '.join(sorted(SUBMODULES))} and exception "
                                      "of modal's modules)", name=fullname)
        return importlib.machinery.ModuleSpec(fullname, _Loader(module))


def installed() -> bool:
    return any(isinstance(finder, ModalFinder) for finder in sys.meta_path)


def install() -> None:
    """Make ``import modal`` (and ``modal.*``) import hutch, in this process from now on.

    Refused (``ImportError``) when a real ``modal`` is imported already: two clients would
    then answer to one name.
    """
    if installed():
        return
    loaded = sys.modules.get("modal")
    if loaded is not None and not getattr(loaded, "__name__", "").startswith("hutch"):
        raise ImportError("a real `modal` package is imported already in this process: "
                          "install hutch as modal before anything imports modal")
    sys.meta_path.insert(0, ModalFinder())


#: ``hutch.install_as_modal()``
install_as_modal = install


def uninstall() -> None:
    """Undo :func:`install`: ``modal`` names are forgotten, and found as before."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, ModalFinder)]
    for name in [n for n in sys.modules if n == "modal" or n.startswith("modal.")]:
        if getattr(sys.modules[name], "__name__", "").startswith("hutch"):
            del sys.modules[name]


def install_from_environment() -> None:
    """What ``hutch-as-modal.pth`` runs at every interpreter's start: :func:`install` when
    ``HUTCH_AS_MODAL`` is set to anything but ``""``, ``0``, ``false``, ``no`` or ``off``."""
    if os.environ.get(ENV, "").strip().lower() not in ("", "0", "false", "no", "off"):
        install()
