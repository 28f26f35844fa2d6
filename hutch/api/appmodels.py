"""The wire models of what Modal programs ask of the platform besides sandboxes: an app's
record (tags, when it was stopped), the timed log entries of sandboxes and apps, and
connect tokens.  Kept apart from :mod:`hutch.api.models` so that each stays readable."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from hutch.api.models import _Wire


class AppInfo(_Wire):
    app_id: str
    name: str
    created_at: float = 0.0
    #: when ``App.stop`` last stopped it (None: in use since, or never stopped)
    stopped_at: float | None = None
    tags: dict[str, str] = Field(default_factory=dict)


class ConnectTokenRequest(_Wire):
    #: given to the sandbox's server as ``X-Verified-User-Data`` (one header line)
    user_metadata: str | None = Field(default=None, max_length=8192)
    port: int = Field(default=8080, ge=1, le=65535)

    @field_validator("user_metadata")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7f
                                     for c in value):
            raise ValueError("user_metadata must not hold control characters")
        return value


class ConnectTokenInfo(_Wire):
    url: str
    token: str


class LogEntryInfo(_Wire):
    """One line of a sandbox entrypoint's output (``source`` stdout or stderr), or an event
    of the engine's about the sandbox (``system``); ``time`` in seconds since the epoch."""

    sandbox_id: str
    time: float
    source: Literal["stdout", "stderr", "system"]
    message: str


class LogEntries(_Wire):
    entries: list[LogEntryInfo]
    #: more entries matched: ask again with ``since`` the last one's time and ``skip`` the
    #: number of entries at that time already received
    more: bool = False
    #: (an app's) it was stopped and none of its sandboxes runs: no entry will come
    app_done: bool = False
