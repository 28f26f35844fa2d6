"""hutch: local, rootless sandboxes with Modal's Sandbox API.

``import hutch as modal`` runs code written for ``modal.Sandbox`` on this machine.
"""

from hutch._version import __version__
from hutch.sdk.app import App
from hutch.sdk.sandbox import ContainerProcess, Sandbox

__all__ = ["App", "ContainerProcess", "Sandbox", "__version__"]
