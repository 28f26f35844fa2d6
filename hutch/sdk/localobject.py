"""What every one of Modal's objects (``Sandbox``, ``Image``, ``Volume``, ``Secret``) has
that only Modal's platform gives: its client object and a link into its dashboard.

hutch talks to its local engine and has neither: ``client`` is None, which every
``client=`` parameter takes (``from_id(..., client=obj.client)``), and
``get_dashboard_url`` refuses with :class:`~hutch.exception.InvalidError` naming the call.
"""

from __future__ import annotations

from typing import NoReturn

from hutch.sdk import options
from hutch.sdk.syncbridge import synchronize


class LocalObject:
    @property
    def client(self) -> None:
        """Modal's client object: None here (see the module)."""
        return None

    @synchronize
    async def get_dashboard_url(self) -> NoReturn:
        options.refuse_platform(f"{type(self).__name__}.get_dashboard_url", options.DASHBOARD)
