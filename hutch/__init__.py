"""hutch: local, rootless sandboxes with Modal's Sandbox API.

``import hutch as modal`` runs code written for ``modal.Sandbox`` on this machine.  Every
call is blocking and also ``.aio`` (``await sb.exec.aio(...)``); :func:`open_sandbox` and
``Sandbox.open_process`` are the structured-concurrency forms for trio and asyncio.
"""

from hutch import exception
from hutch._version import __version__
from hutch.exception import Error
from hutch.sdk.app import App
from hutch.sdk.image import Image
from hutch.sdk.output import enable_output
from hutch.sdk.pool import WarmPool
from hutch.sdk.probe import Probe
from hutch.sdk.process import ContainerProcess
from hutch.sdk.sandbox import Sandbox, open_sandbox
from hutch.sdk.secret import Secret
from hutch.sdk.streams import StreamReader, StreamType, StreamWriter
from hutch.sdk.tunnel import Tunnel
from hutch.sdk.volume import Volume

__all__ = [
    "App",
    "ContainerProcess",
    "Error",
    "Image",
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
    "open_sandbox",
]
