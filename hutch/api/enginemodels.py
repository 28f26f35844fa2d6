"""Wire types of the engine itself: ``GET /v1/engine`` (its version, runtime, user
namespace, default limits and reserve) and ``GET /v1/engine/checkpoint``.  Kept apart from
:mod:`hutch.api.models`, which holds the sandboxes' own."""

from __future__ import annotations

from pydantic import Field

from hutch.api.models import _Wire


class DefaultLimits(_Wire):
    """The limits a sandbox that sets none gets from this engine (None: no limit), in the
    API's units; ``memory_mib`` grows by a sandbox's ``ephemeral_disk``, and a request
    above a default raises it to the request (docs/limits.md, "resources")."""

    memory_mib: int | None = None
    cpu: float | None = None
    pids: int | None = None


class ReserveInfo(_Wire):
    """The engine's reserve (:mod:`hutch.engine.lifecycle.reserve`): sandboxes started
    ahead of time for the configuration used most."""

    #: how many it keeps (``HUTCH_RESERVE``; 0: none)
    size: int = 0
    #: how many wait now
    ready: int = 0
    #: creates it has served since the engine started
    taken: int = 0


class ReserveRequest(_Wire):
    """``PUT /v1/engine/reserve``: how many sandboxes the reserve keeps from now on."""

    size: int = Field(ge=0, le=64)


class EngineInfo(_Wire):
    version: str
    api_version: str
    pid: int
    runtime: str
    runtime_fallback_reason: str | None
    userns_mode: str
    data_dir: str
    default_image: str
    #: how commands start in sandboxes: ``zygote`` (the engine's fork server) or
    #: ``runtime`` (the OCI runtime's exec)
    exec_via: str = "runtime"
    default_limits: DefaultLimits = Field(default_factory=DefaultLimits)
    reserve: ReserveInfo = Field(default_factory=lambda: ReserveInfo())


class CheckpointInfo(_Wire):
    """``GET /v1/engine/checkpoint``: whether the engine could checkpoint a sandbox (Modal's
    memory snapshots), and why not, as the engine measured it in its own user namespace."""

    supported: bool
    reason: str
