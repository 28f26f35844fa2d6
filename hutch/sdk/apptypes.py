"""What ``App.info()`` returns, with Modal's names (``modal.types.AppInfo``,
``AppLifecycle``, ``AppState``).

A hutch app is a named namespace of sandboxes that lasts until it is removed, made on
first use (``App.lookup(create_if_missing=True)``, ``app.run()``): the closest of Modal's
states is ``deployed`` (``ephemeral`` in the program that runs it, ``stopped`` after
``App.stop`` until a sandbox is created in it again), with no version and no Functions or
servers.
"""

from __future__ import annotations

import enum
import getpass
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


class AppState(str, enum.Enum):  # noqa: UP042 - Modal's, whose str() is AppState.X
    EPHEMERAL = "ephemeral"
    DETACHED = "detached"
    DEPLOYED = "deployed"
    STOPPING = "stopping"
    STOPPED = "stopped"
    INITIALIZING = "initializing"
    DISABLED = "disabled"


@dataclass
class AppLifecycle:
    """When the app was made, and by whom (the local user)."""

    state: AppState
    version: int | None
    created_at: datetime
    created_by: str
    deployed_at: datetime | None
    deployed_by: str | None
    stopped_at: datetime | None
    stopped_by: str | None


@dataclass(frozen=True)
class AppInfo:
    app_id: str
    description: str
    lifecycle: AppLifecycle
    functions: dict[str, str]
    servers: dict[str, str]

    @classmethod
    def from_engine(cls, found: dict[str, Any], running: bool = False) -> AppInfo:
        """From the engine's record; ``running``: this program runs it (``app.run()``),
        so it is ephemeral, as Modal's apps run that way are."""
        made = datetime.fromtimestamp(found.get("created_at") or 0.0, UTC)
        stopped = found.get("stopped_at")
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # a uid without a name
            user = str(os.getuid())
        state = AppState.STOPPED if stopped is not None else \
            AppState.EPHEMERAL if running else AppState.DEPLOYED
        deployed = state is AppState.DEPLOYED
        return cls(app_id=found["app_id"], description=found["name"],
                   lifecycle=AppLifecycle(
                       state=state, version=None, created_at=made, created_by=user,
                       deployed_at=made if deployed else None,
                       deployed_by=user if deployed else None,
                       stopped_at=None if stopped is None else
                       datetime.fromtimestamp(stopped, UTC),
                       stopped_by=None if stopped is None else user),
                   functions={}, servers={})
