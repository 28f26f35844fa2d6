"""Named secrets (``hutch secret create``, ``Secret.objects``, ``Secret.from_name``): one
file per secret in ``<data>/secrets/``, readable by the user alone.

Why files beside the engine's data rather than the engine's database: a named secret is
the user's, like a dotenv file, and is read by the SDK when a sandbox, exec or build uses
it (its values then travel as the request's secret environment, which the engine wipes
when the sandbox ends: ``hutch.engine.storage.store``).  The folder is made 0700 and each
file 0600 before a byte is written; a file is written whole beside its name and renamed
(or hard-linked, for a create that must not replace), so a reader never sees half of one
and two writers never interleave.  Values appear in no log, listing or ``repr``.
"""

from __future__ import annotations

import json
import os
import secrets as random
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from hutch.api import paths
from hutch.exception import AlreadyExistsError, InvalidError, NotFoundError
from hutch.sdk.options import check_env, check_object_name

#: The characters of a secret id after ``st-`` (as Modal's ids look).
_ID_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class StoredSecret:
    name: str
    secret_id: str
    created_at: float
    updated_at: float
    env: dict[str, str]


def folder() -> Path:
    """``<data>/secrets``, made 0700 if missing; refused if others could read it."""
    where = paths.data_dir() / "secrets"
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = where.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise InvalidError(f"{where} is not a directory of this user: named secrets are "
                           "kept there")
    if info.st_mode & 0o077:
        os.chmod(where, 0o700)
    return where


def _file(name: str) -> Path:
    return folder() / f"{check_object_name(name, 'Secret')}.json"


def _write_beside(target: Path, record: StoredSecret) -> Path:
    """The record written whole, 0600, to a new file beside ``target``."""
    partial = target.with_name(f".{target.name}.{random.token_hex(8)}.part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record.__dict__, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return partial


def read(name: str) -> StoredSecret:
    try:
        doc = json.loads(_file(name).read_text())
    except FileNotFoundError:
        raise NotFoundError(f"Secret {name!r} not found (hutch secret list shows the named "
                            "secrets; hutch secret create makes one)") from None
    except ValueError as exc:
        raise InvalidError(f"the named secret {name!r} is unreadable: {exc}") from None
    return StoredSecret(**doc)


def create(name: str, env: dict[str, str], *, allow_existing: bool = False) -> None:
    """Store a new named secret; with ``allow_existing``, one of that name is kept as is."""
    target = _file(name)
    checked = check_env(env, f"Secret {name!r}")
    now = time.time()
    record = StoredSecret(name, "st-" + "".join(random.choice(_ID_CHARS) for _ in range(22)),
                          now, now, checked)
    partial = _write_beside(target, record)
    try:
        os.link(partial, target)  # fails if it exists: a create never replaces
    except FileExistsError:
        if not allow_existing:
            raise AlreadyExistsError(f"Secret {name!r} already exists") from None
    finally:
        partial.unlink(missing_ok=True)


def update(name: str, env: dict[str, str]) -> None:
    """Replace the values of the named secret ``name`` (its keys become ``env``'s)."""
    old = read(name)
    record = StoredSecret(name, old.secret_id, old.created_at, time.time(),
                          check_env(env, f"Secret {name!r}"))
    os.replace(_write_beside(_file(name), record), _file(name))


def delete(name: str, *, allow_missing: bool = False) -> None:
    try:
        _file(name).unlink()
    except FileNotFoundError:
        if not allow_missing:
            raise NotFoundError(f"Secret {name!r} not found") from None


def listing() -> list[StoredSecret]:
    """Every named secret, newest first."""
    found = []
    for path in folder().glob("*.json"):
        try:
            found.append(read(path.stem))
        except (NotFoundError, InvalidError):
            continue  # (deleted meanwhile, or not one of ours)
    return sorted(found, key=lambda s: s.created_at, reverse=True)
