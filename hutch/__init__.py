"""hutch: local, rootless sandboxes with Modal's Sandbox API.

``import hutch as modal`` runs code written for ``modal.Sandbox`` on this machine.  Every
call is blocking and also ``.aio`` (``await sb.exec.aio(...)``); :func:`open_sandbox` and
``Sandbox.open_process`` are the structured-concurrency forms for trio and asyncio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hutch import exception
from hutch._version import __version__
from hutch.exception import Error

if TYPE_CHECKING:
    from hutch.modal.aliasing import install_as_modal
    from hutch.sdk.app import App
    from hutch.sdk.image import Image
    from hutch.sdk.network import Network
    from hutch.sdk.output import enable_output
    from hutch.sdk.pool import WarmPool
    from hutch.sdk.probe import Probe
    from hutch.sdk.process import ContainerProcess
    from hutch.sdk.sandbox import Sandbox, open_sandbox
    from hutch.sdk.secret import Secret
    from hutch.sdk.streams import StreamReader, StreamType, StreamWriter
    from hutch.sdk.tunnel import Tunnel
    from hutch.sdk.volume import Volume

#: Where each of the SDK's names lives, imported at its first use: the engine daemon is
#: ``hutch.engine`` (Python runs this file first), and loading the SDK here would give it
#: 22 SDK modules, httpx and rich it never uses.
_LAZY = {
    "App": "hutch.sdk.app",
    "ContainerProcess": "hutch.sdk.process",
    "Image": "hutch.sdk.image",
    "Network": "hutch.sdk.network",
    "Probe": "hutch.sdk.probe",
    "Sandbox": "hutch.sdk.sandbox",
    "Secret": "hutch.sdk.secret",
    "StreamReader": "hutch.sdk.streams",
    "StreamType": "hutch.sdk.streams",
    "StreamWriter": "hutch.sdk.streams",
    "Tunnel": "hutch.sdk.tunnel",
    "Volume": "hutch.sdk.volume",
    "WarmPool": "hutch.sdk.pool",
    "enable_output": "hutch.sdk.output",
    "install_as_modal": "hutch.modal.aliasing",
    "open_sandbox": "hutch.sdk.sandbox",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hutch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # (found directly from now on)
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "App",
    "ContainerProcess",
    "Error",
    "Image",
    "Network",
    "Probe",
    "Sandbox",
    "Secret",
    "StreamReader",
    "StreamType",
    "StreamWriter",
    "Tunnel",
    "Volume",
    "WarmPool",
    "__version__",
    "enable_output",
    "exception",
    "install_as_modal",
    "open_sandbox",
]
