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

import contextlib
import fcntl
import json
import os
import secrets as random
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
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
    env: dict[str, str] = field(repr=False)  # (a repr or traceback shows no value)


def folder() -> Path:
    """``<data>/secrets``, made 0700 if missing; refused if another user owns it or could
    read or change it (what another user may have planted there is not trusted)."""
    where = paths.data_dir() / "secrets"
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = where.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() \
            or info.st_mode & 0o077:
        raise InvalidError(f"{where} must be a directory of this user that only they can "
                           f"use (chmod 700 {where}, after checking what is in it): "
                           "named secrets are kept there")
    return where


@contextlib.contextmanager
def _changing() -> Iterator[Path]:
    """The folder, locked against other changes (one create, update or delete at a time,
    in every process of the user: an update never brings back a secret deleted
    meanwhile)."""
    where = folder()
    fd = os.open(where / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield where
    finally:
        os.close(fd)


def _file(name: str, where: Path | None = None) -> Path:
    return (where or folder()) / f"{check_object_name(name, 'Secret')}.json"


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
    """The named secret: a regular file of this user that only they can read (a link, a
    FIFO or a file planted by another user is refused, unopened where it would block)."""
    path = _file(name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFoundError(f"Secret {name!r} not found (hutch secret list shows the named "
                            "secrets; hutch secret create makes one)") from None
    except OSError as exc:
        raise InvalidError(f"the named secret {name!r} is unreadable: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() \
                or info.st_mode & 0o077:
            raise InvalidError(f"the named secret {name!r} ({path}) is not a private file "
                               "of this user: not read")
        with os.fdopen(os.dup(fd)) as f:
            doc = json.load(f)
        record = StoredSecret(**doc)
        if not isinstance(record.env, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in record.env.items()):
            raise TypeError("env is not a dict of str to str")
    except (ValueError, TypeError) as exc:
        raise InvalidError(f"the named secret {name!r} is unreadable: "
                           f"{type(exc).__name__}") from None
    finally:
        os.close(fd)
    return record


def create(name: str, env: dict[str, str], *, allow_existing: bool = False) -> None:
    """Store a new named secret; with ``allow_existing``, one of that name is kept as is."""
    check_object_name(name, "Secret")  # (before the folder is touched)
    checked = check_env(env, f"Secret {name!r}")
    now = time.time()
    record = StoredSecret(name, _new_id(), now, now, checked)
    with _changing() as where:
        target = _file(name, where)
        partial = _write_beside(target, record)
        try:
            os.link(partial, target)  # fails if it exists: a create never replaces
        except FileExistsError:
            if not allow_existing:
                raise AlreadyExistsError(f"Secret {name!r} already exists") from None
        finally:
            partial.unlink(missing_ok=True)


def _new_id() -> str:
    return "st-" + "".join(random.choice(_ID_CHARS) for _ in range(22))


def replace(name: str, env: dict[str, str]) -> None:
    """Store ``env`` as the named secret ``name``, made or replacing what is there (its id
    kept when the old record is readable): ``hutch secret create --force``."""
    check_object_name(name, "Secret")
    checked = check_env(env, f"Secret {name!r}")
    with _changing() as where:
        try:
            old = read(name)
            secret_id, created = old.secret_id, old.created_at
        except (NotFoundError, InvalidError):
            secret_id, created = _new_id(), time.time()
        _put(where, StoredSecret(name, secret_id, created, time.time(), checked))


def _put(where: Path, record: StoredSecret) -> None:
    target = _file(record.name, where)
    partial = _write_beside(target, record)
    try:
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def update(name: str, env: dict[str, str]) -> None:
    """Replace the values of the named secret ``name`` (its keys become ``env``'s)."""
    checked = check_env(env, f"Secret {name!r}")
    with _changing() as where:
        old = read(name)  # (NotFoundError: deleted meanwhile, and stays deleted)
        _put(where, StoredSecret(name, old.secret_id, old.created_at, time.time(), checked))


def delete(name: str, *, allow_missing: bool = False) -> None:
    check_object_name(name, "Secret")
    try:
        with _changing() as where:
            _file(name, where).unlink()
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
