"""Named engines, as ``docker context`` keeps them: ``hutch context create laptop-vm
--engine https://vm:7443 --credentials ~/hutch-vm``, then ``hutch context use laptop-vm``
makes every later SDK program and CLI call of this user go there.

Kept in ``$XDG_CONFIG_HOME/hutch/contexts.json`` (``~/.config/hutch``), mode 0600: a
context names where credentials are, never holds them.  ``default`` is the local engine
and always exists.  ``HUTCH_CONTEXT`` picks one for a process; ``HUTCH_ENGINE`` overrides
both (:mod:`.endpoint`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hutch.exception import InvalidError, NotFoundError

DEFAULT = "default"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")


@dataclass
class Context:
    name: str
    engine: str
    credentials: str | None = None
    #: Extra ``ssh`` options for an ``ssh://`` engine (``-i KEY``, ``-o ...``).
    ssh_options: list[str] = field(default_factory=list)


def config_dir() -> Path:
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg else Path(os.environ.get("HOME") or os.path.expanduser("~")) \
        / ".config"
    return base / "hutch"


def _file() -> Path:
    return config_dir() / "contexts.json"


def _load() -> dict[str, Any]:
    try:
        data = json.loads(_file().read_text())
    except FileNotFoundError:
        return {"current": DEFAULT, "contexts": {}}
    except (OSError, ValueError) as exc:
        raise InvalidError(f"{_file()} cannot be read: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("contexts"), dict):
        raise InvalidError(f"{_file()} is not a hutch contexts file")
    return data


def _save(data: dict[str, Any]) -> None:
    folder = config_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    staged = folder / f".contexts.{os.getpid()}.tmp"
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2)
    os.replace(staged, _file())


def _context(name: str, raw: Any) -> Context:
    if not isinstance(raw, dict) or not isinstance(raw.get("engine"), str):
        raise InvalidError(f"the context {name!r} in {_file()} has no engine URL")
    return Context(name=name, engine=raw["engine"], credentials=raw.get("credentials"),
                   ssh_options=[str(o) for o in raw.get("ssh_options") or []])


#: What a client bundle of ``hutch engine remote-credentials`` holds.
BUNDLE_FILES = ("ca.crt", "client.crt", "client.key", "token")


def check_bundle(bundle: Path) -> Path:
    """``bundle`` if it is a client bundle's directory, else :class:`NotFoundError`
    naming what is missing."""
    if not bundle.is_dir():
        raise NotFoundError(f"the client bundle {bundle} does not exist (`hutch engine "
                            "remote-credentials` on the engine's machine writes one)")
    missing = [name for name in BUNDLE_FILES if not (bundle / name).is_file()]
    if missing:
        raise NotFoundError(f"{bundle} is not a hutch client bundle: it lacks "
                            f"{', '.join(missing)}")
    return bundle


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidError(f"a context's name is letters, digits, '.', '_' and '-', got "
                           f"{name!r}")
    return name


def create(name: str, engine: str, credentials: str | None = None,
           ssh_options: list[str] | None = None) -> Context:
    check_name(name)
    if name == DEFAULT:
        raise InvalidError("`default` is the local engine: choose another name")
    if not engine.startswith(("https://", "ssh://", "unix://")):
        raise InvalidError(f"an engine URL is https://, ssh:// or unix://, got {engine!r}")
    if engine.startswith("https://") and credentials is None:
        raise InvalidError("an https:// engine needs --credentials: the bundle directory "
                           "`hutch engine remote-credentials` wrote on its machine")
    if not engine.startswith("https://") and credentials is not None:
        raise InvalidError("--credentials is for https:// engines (ssh:// logs in with ssh's "
                           "own keys: --ssh-option)")
    if ssh_options and not engine.startswith("ssh://"):
        raise InvalidError("--ssh-option is for ssh:// engines")
    data = _load()
    if name in data["contexts"]:
        raise InvalidError(f"the context {name!r} exists (`hutch context rm {name}` first)")
    if credentials is not None:
        credentials = str(check_bundle(Path(credentials).expanduser().resolve()))
    context = Context(name, engine, credentials, list(ssh_options or []))
    data["contexts"][name] = {k: v for k, v in asdict(context).items() if k != "name"}
    _save(data)
    return context


def remove(name: str) -> None:
    if name == DEFAULT:
        raise InvalidError("`default` is the local engine and cannot be removed")
    data = _load()
    if name not in data["contexts"]:
        raise NotFoundError(f"no context named {name!r}")
    del data["contexts"][name]
    if data.get("current") == name:
        data["current"] = DEFAULT
    _save(data)


def use(name: str) -> None:
    data = _load()
    if name != DEFAULT and name not in data["contexts"]:
        raise NotFoundError(f"no context named {name!r} (`hutch context ls` lists them)")
    data["current"] = name
    _save(data)


def listed() -> tuple[str, list[Context]]:
    """The current context's name, and every context (``default`` first)."""
    data = _load()
    found = [Context(DEFAULT, "")] + [_context(n, raw) for n, raw in
                                      sorted(data["contexts"].items())]
    return str(data.get("current") or DEFAULT), found


def chosen() -> Context | None:
    """The context in force (``HUTCH_CONTEXT``, else the current one), None for the local
    engine."""
    name = os.environ.get("HUTCH_CONTEXT") or None
    data = _load() if name is not None or _file().exists() else None
    if data is None:
        return None
    name = name or str(data.get("current") or DEFAULT)
    if name == DEFAULT:
        return None
    raw = data["contexts"].get(name)
    if raw is None:
        raise NotFoundError(f"the hutch context {name!r} does not exist (`hutch context ls` "
                            "lists them; `hutch context use default` goes back to the local "
                            "engine)")
    return _context(name, raw)
