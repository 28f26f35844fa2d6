"""What ``modal`` says about where it runs and how it is configured, answered for hutch:
every program runs locally, outside any Modal Function, with one profile.

Why these exist: frameworks read them at import (SWE-ReX reads ``modal.config._profile``,
others call ``modal.is_local()``), and a missing name would stop them before any sandbox.
"""

from __future__ import annotations

import logging
import os
from typing import Any

#: The one profile (Modal's are accounts; hutch has none).
PROFILE = "hutch"

logger = logging.getLogger("hutch.modal")


def is_local() -> bool:
    """True: a program using hutch always runs on this machine, never in a Function."""
    return True


def current_input_id() -> str | None:
    """None: no Function input is being processed here."""
    return None


def current_function_call_id() -> str | None:
    """None: no Function call is being processed here."""
    return None


def interact() -> None:
    """Nothing to do: Modal's interactive mode is for code running inside Functions."""


class Config:
    """Modal's settings, read as Modal reads them from the environment (``MODAL_<KEY>``);
    none of them changes what hutch does."""

    def get(self, key: str, profile: str | None = None, use_env: bool = True) -> Any:
        return os.environ.get("MODAL_" + key.upper()) if use_env else None

    def override_locally(self, key: str, value: str) -> None:
        os.environ["MODAL_" + key.upper()] = value

    def __getitem__(self, key: str) -> Any:
        return self.get(key)

    def __repr__(self) -> str:
        return f"Config(profile={PROFILE!r})"

    def to_dict(self) -> dict[str, Any]:
        return {k[6:].lower(): v for k, v in os.environ.items() if k.startswith("MODAL_")}


config = Config()


def config_profiles() -> list[str]:
    return [PROFILE]


def config_set_active_profile(profile: str) -> None:
    """Accepted for the one profile there is."""
