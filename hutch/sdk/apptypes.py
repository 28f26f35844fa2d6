"""What ``App.info()`` returns, with Modal's names (``modal.types.AppInfo``,
``AppLifecycle``, ``AppState``).

A hutch app is a named namespace of sandboxes that lasts until it is removed, made on
first use (``App.lookup(create_if_missing=True)``, ``app.run()``): the closest of Modal's
states is ``deployed``, with no version and no Functions or servers.
"""

from __future__ import annotations

import enum
import getpass
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


class AppState(enum.StrEnum):
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
    def from_engine(cls, found: dict[str, Any]) -> AppInfo:
        made = datetime.fromtimestamp(found.get("created_at") or 0.0, UTC)
        user = getpass.getuser()
        return cls(app_id=found["app_id"], description=found["name"],
                   lifecycle=AppLifecycle(state=AppState.DEPLOYED, version=None,
                                          created_at=made, created_by=user, deployed_at=made,
                                          deployed_by=user, stopped_at=None, stopped_by=None),
                   functions={}, servers={})
