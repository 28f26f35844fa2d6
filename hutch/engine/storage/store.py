"""The engine's durable state: apps, sandboxes, names, tags and execs in SQLite (WAL).

State is committed before it is reported, so a daemon killed at any point loses nothing a
client was told.  A sandbox name is unique among the *live* sandboxes of an app; the
database enforces it with a partial unique index, so concurrent creates with one name give
exactly one winner whatever the Python code does.  Calls are short and synchronous: the
daemon is one trio thread and SQLite answers these in microseconds.

A sandbox's environment (its ``secrets=`` merged with ``env``) is kept while it runs, so a
restarted engine can start its commands with it, and no longer: :meth:`Store.mark_exited`
wipes it from the row (nothing reads it from an ended sandbox), and so does opening a
database whose ended rows still hold one.  The files are created 0600; ``secure_delete``
makes SQLite overwrite what it deletes (a row's old cell, freed pages) and the WAL, which
still holds the row as it was written, is checkpointed and truncated after each wipe: no
byte of a value is left in any file (tests/security/test_secrets_at_rest.py).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict

from hutch.engine.errors import AlreadyExists, Conflict, NotFound
from hutch.engine.storage.apprecords import AppRecords
from hutch.engine.storage.recordids import new_id

SCHEMA = """
CREATE TABLE IF NOT EXISTS apps (
    app_id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    stopped_at REAL
);
CREATE TABLE IF NOT EXISTS app_tags (
    app_id TEXT NOT NULL REFERENCES apps(app_id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (app_id, key)
);
CREATE TABLE IF NOT EXISTS sandboxes (
    sandbox_id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL REFERENCES apps(app_id),
    name TEXT,
    state TEXT NOT NULL CHECK (state IN ('creating', 'running', 'exited')),
    image TEXT NOT NULL,
    spec TEXT NOT NULL,
    init_pid INTEGER,
    timeout REAL NOT NULL,
    created_at REAL NOT NULL,
    deadline REAL NOT NULL,
    finished_at REAL,
    returncode INTEGER,
    exit_reason TEXT,
    runtime TEXT NOT NULL,
    exit_detail TEXT,
    pooled INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS sandbox_live_name
    ON sandboxes (app_id, name) WHERE name IS NOT NULL AND state != 'exited';
CREATE INDEX IF NOT EXISTS sandbox_state ON sandboxes (state);
CREATE TABLE IF NOT EXISTS sandbox_tags (
    sandbox_id TEXT NOT NULL REFERENCES sandboxes(sandbox_id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (sandbox_id, key)
);
CREATE TABLE IF NOT EXISTS volumes (
    volume_id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
-- the ids a volume's files have (hutch/engine/storage/volumeids.py); no row: the engine's own.
-- prev: [[base, size], ...] some may still have (a move not finished)
CREATE TABLE IF NOT EXISTS volume_ids (
    volume_id TEXT PRIMARY KEY REFERENCES volumes(volume_id) ON DELETE CASCADE,
    base INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mixed INTEGER NOT NULL DEFAULT 0,
    prev TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS execs (
    exec_id TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL REFERENCES sandboxes(sandbox_id) ON DELETE CASCADE,
    argv TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'exited')),
    returncode INTEGER,
    timed_out INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    finished_at REAL
);
"""

log = logging.getLogger("hutch.store")

#: The spec of an ended sandbox, its environment (secret values among it) wiped.
_WIPED_SPEC = "json_set(spec, '$.env', json('{}'))"

DEFAULT_APP = "default"


class SandboxSpec(BaseModel):
    """What the engine keeps of a sandbox's request and set-up (the ``spec`` column), read
    back by a restarted daemon, a pool handing the sandbox out and the routes.  A row
    written by an older engine lacks some fields: they take these defaults."""

    model_config = ConfigDict(extra="ignore")

    argv: list[str] = []
    env: dict[str, str] = {}  # (wiped when the sandbox ends: secret values are among it)
    workdir: str = "/"
    #: it runs the idle entrypoint (a pooled sandbox's: env and workdir come at the take)
    default_entrypoint: bool = False
    verbose: bool = False
    idle_timeout: float | None = None
    probe: dict[str, Any] | None = None
    #: ``sha256:`` diff ids of its image's layers
    layers: list[str] = []
    #: names of the volumes it mounts
    volumes: list[str] = []
    limits: dict[str, Any] = {}
    #: it has a cgroup of its own
    cgroup: bool = False
    #: its entrypoint runs on a terminal (``pty=True``: :mod:`hutch.engine.lifecycle.consoles`)
    terminal: bool = False
    ephemeral_disk: int | None = None
    #: its id slice (:meth:`hutch.engine.isolation.idslices.Slice.record`; ``volumes``: the
    #: slice is its volumes'), or None where it shares the engine's ids
    ids: dict[str, Any] | None = None
    #: the disk slot its writable layer is on
    disk_slot: str | None = None
    #: open network access without an allowlist: tunnels listen inside it too
    reaches_tunnels: bool = False


@dataclass
class SandboxRow:
    sandbox_id: str
    app_id: str
    name: str | None
    state: str
    image: str
    spec: SandboxSpec
    init_pid: int | None
    timeout: float
    created_at: float
    deadline: float
    finished_at: float | None
    returncode: int | None
    exit_reason: str | None
    runtime: str
    tags: dict[str, str]
    exit_detail: str | None = None
    #: waiting in a warm pool: not listed, not found by name, no deadline yet
    pooled: int = 0


def _make_private(path: Path) -> None:
    """Create the database file 0600, whatever the umask (SQLite gives the -wal and -shm
    files it makes the database file's mode), and take away the group and other access
    that files of an older engine had."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    for name in (path.name, path.name + "-wal", path.name + "-shm"):
        try:
            os.chmod(path.with_name(name), 0o600, follow_symlinks=False)
        except FileNotFoundError:
            pass


class VolumeIdsRow(NamedTuple):
    """A volume's ids: its slice, whether some of its files may have other ids (written by
    sandboxes sharing the engine's ids, or a move not finished), and the slices
    (``(base, size)``) some may still have."""

    base: int
    size: int
    mixed: bool
    prev: list[tuple[int, int]]


def _volume_ids_row(r: sqlite3.Row) -> VolumeIdsRow:
    return VolumeIdsRow(r["base"], r["size"], bool(r["mixed"]),
                        [(b, n) for b, n in json.loads(r["prev"])])


class Store(AppRecords):
    def __init__(self, path: Path) -> None:
        _make_private(path)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA secure_delete=ON")  # deleted content is overwritten
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(SCHEMA)
        columns = {r["name"] for r in self.db.execute("PRAGMA table_info(sandboxes)")}
        if "exit_detail" not in columns:  # a database made before limits existed
            self.db.execute("ALTER TABLE sandboxes ADD COLUMN exit_detail TEXT")
        if "stopped_at" not in {r["name"] for r in self.db.execute("PRAGMA table_info(apps)")}:
            self.db.execute("ALTER TABLE apps ADD COLUMN stopped_at REAL")  # before App.stop
        if "pooled" not in columns:  # ... or before warm pools
            self.db.execute("ALTER TABLE sandboxes ADD COLUMN pooled INTEGER NOT NULL DEFAULT 0")
        volume_columns = {r["name"] for r in self.db.execute("PRAGMA table_info(volume_ids)")}
        if "prev" not in volume_columns:  # made by a development version of volume ids
            self.db.execute("ALTER TABLE volume_ids ADD COLUMN prev TEXT NOT NULL DEFAULT '[]'")
        # Sandboxes that ended under an engine that kept their environment.
        if self.db.execute(
            f"UPDATE sandboxes SET spec = {_WIPED_SPEC} WHERE state = 'exited'"
            " AND json_extract(spec, '$.env') != '{}'"
        ).rowcount:
            self._truncate_wal()

    def _truncate_wal(self) -> None:
        """Copy the WAL into the database and empty it: it still holds rows as they were
        written, wiped values included."""
        busy = self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        if busy:
            log.warning("state.db: the WAL could not be emptied (busy); wiped values stay"
                        " in state.db-wal until the next wipe")

    def close(self) -> None:
        self.db.close()

    # volumes ----------------------------------------------------------------------------
    def volume(self, name: str, *, create: bool) -> dict[str, Any]:
        """A volume's record (created when missing and ``create``)."""
        if create:
            self.db.execute(
                "INSERT OR IGNORE INTO volumes (volume_id, name, created_at) VALUES (?, ?, ?)",
                (new_id("vo"), name, time.time()),
            )
        row = self.db.execute("SELECT * FROM volumes WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"Volume {name!r} not found")
        return dict(row)

    def volumes(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT * FROM volumes ORDER BY name")]

    def rename_volume(self, name: str, new_name: str) -> None:
        try:
            with self.db:
                changed = self.db.execute("UPDATE volumes SET name = ? WHERE name = ?",
                                          (new_name, name)).rowcount
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"Volume {new_name!r} already exists") from None
        if changed == 0:
            raise NotFound(f"Volume {name!r} not found")

    def delete_volume(self, name: str) -> None:
        if self.db.execute("DELETE FROM volumes WHERE name = ?", (name,)).rowcount == 0:
            raise NotFound(f"Volume {name!r} not found")

    def volume_ids(self) -> dict[str, VolumeIdsRow]:
        """Each volume's id slice, by volume id."""
        return {r["volume_id"]: _volume_ids_row(r)
                for r in self.db.execute("SELECT * FROM volume_ids")}

    def volume_ids_of(self, volume_id: str) -> VolumeIdsRow | None:
        """One volume's id slice (None: it has the engine's ids), read on every files call
        and mount of the volume: one row, not the table."""
        r = self.db.execute("SELECT * FROM volume_ids WHERE volume_id = ?",
                            (volume_id,)).fetchone()
        return None if r is None else _volume_ids_row(r)

    def set_volume_ids(self, volume_id: str, base: int, size: int, *, moving: bool = False,
                       prev: list[tuple[int, int]] | None = None) -> None:
        """The volume's files have ids ``base``/``size``; ``moving``: some may still have
        the engine's own or those of the slices ``prev``, a move being under way."""
        self.db.execute(
            "INSERT OR REPLACE INTO volume_ids (volume_id, base, size, mixed, prev)"
            " VALUES (?, ?, ?, ?, ?)",
            (volume_id, base, size, int(moving), json.dumps(prev or [])))

    def mark_volume_ids_mixed(self, volume_id: str) -> None:
        self.db.execute("UPDATE volume_ids SET mixed = 1 WHERE volume_id = ?", (volume_id,))

    # sandboxes --------------------------------------------------------------------------
    def insert_sandbox(self, *, sandbox_id: str, app_id: str, name: str | None, image: str,
                       spec: SandboxSpec, timeout: float, runtime: str,
                       tags: dict[str, str], pooled: bool = False) -> None:
        now = time.time()
        try:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.execute(
                    "INSERT INTO sandboxes (sandbox_id, app_id, name, state, image, spec,"
                    " timeout, created_at, deadline, runtime, pooled)"
                    " VALUES (?, ?, ?, 'creating', ?, ?, ?, ?, ?, ?, ?)",
                    (sandbox_id, app_id, name, image, spec.model_dump_json(), timeout, now,
                     now + timeout, runtime, int(pooled)),
                )
                self.db.executemany(
                    "INSERT INTO sandbox_tags (sandbox_id, key, value) VALUES (?, ?, ?)",
                    [(sandbox_id, k, v) for k, v in tags.items()],
                )
                if not pooled:  # a stopped app is in use again
                    self.db.execute("UPDATE apps SET stopped_at = NULL WHERE app_id = ?",
                                    (app_id,))
        except sqlite3.IntegrityError as exc:
            if "sandboxes.app_id, sandboxes.name" in str(exc):
                raise AlreadyExists(
                    f"a running sandbox named {name!r} already exists in this app"
                ) from exc
            raise

    def mark_running(self, sandbox_id: str, init_pid: int) -> None:
        self.db.execute(
            "UPDATE sandboxes SET state = 'running', init_pid = ? WHERE sandbox_id = ?",
            (init_pid, sandbox_id),
        )

    def take_pooled(self, sandbox_id: str, *, name: str | None, tags: dict[str, str],
                    spec: SandboxSpec, timeout: float) -> float:
        """Hand a pooled sandbox to its user: from now on it is an ordinary sandbox, created
        now, with this name, tags, spec and timeout.  Returns its deadline."""
        now = time.time()
        try:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                changed = self.db.execute(
                    "UPDATE sandboxes SET pooled = 0, name = ?, spec = ?, timeout = ?,"
                    " created_at = ?, deadline = ? WHERE sandbox_id = ? AND pooled = 1"
                    " AND state = 'running'",
                    (name, spec.model_dump_json(), timeout, now, now + timeout, sandbox_id),
                ).rowcount
                if changed != 1:
                    raise Conflict(f"pooled sandbox {sandbox_id} is gone")
                self.db.executemany(
                    "INSERT INTO sandbox_tags (sandbox_id, key, value) VALUES (?, ?, ?)",
                    [(sandbox_id, k, v) for k, v in tags.items()],
                )
                self.db.execute(  # a stopped app is in use again
                    "UPDATE apps SET stopped_at = NULL WHERE app_id ="
                    " (SELECT app_id FROM sandboxes WHERE sandbox_id = ?)", (sandbox_id,))
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(
                f"a running sandbox named {name!r} already exists in this app") from exc
        return now + timeout

    def mark_exited(self, sandbox_id: str, returncode: int | None, reason: str,
                    detail: str | None = None) -> None:
        """Record the end of a sandbox once: the first recorded outcome wins.  Its
        environment is wiped (secret values are not kept past their sandbox); the rest of
        its spec stays, for what the engine reads of an ended sandbox."""
        if self.db.execute(
            "UPDATE sandboxes SET state = 'exited', returncode = ?, exit_reason = ?,"
            f" exit_detail = ?, finished_at = ?, spec = {_WIPED_SPEC}"
            " WHERE sandbox_id = ? AND state != 'exited'",
            (returncode, reason, detail, time.time(), sandbox_id),
        ).rowcount:
            self._truncate_wal()

    def delete_sandbox(self, sandbox_id: str) -> None:
        self.db.execute("DELETE FROM sandboxes WHERE sandbox_id = ?", (sandbox_id,))

    def _row(self, row: sqlite3.Row) -> SandboxRow:
        tags = dict(self.db.execute(
            "SELECT key, value FROM sandbox_tags WHERE sandbox_id = ?", (row["sandbox_id"],)
        ).fetchall())
        data = dict(row)
        data["spec"] = SandboxSpec.model_validate_json(data["spec"])
        return SandboxRow(**data, tags=tags)

    def sandbox(self, sandbox_id: str) -> SandboxRow:
        row = self.db.execute("SELECT * FROM sandboxes WHERE sandbox_id = ?",
                              (sandbox_id,)).fetchone()
        if row is None:
            raise NotFound(f"Sandbox {sandbox_id!r} not found")
        return self._row(row)

    def sandbox_by_name(self, app_id: str, name: str, include_terminated: bool = False
                        ) -> SandboxRow:
        """The running sandbox called ``name``; ``include_terminated``: else the newest
        that had it."""
        row = self.db.execute(
            "SELECT * FROM sandboxes WHERE app_id = ? AND name = ? AND state != 'exited'",
            (app_id, name),
        ).fetchone()
        if row is None and include_terminated:
            row = self.db.execute(
                "SELECT * FROM sandboxes WHERE app_id = ? AND name = ? AND pooled = 0"
                " ORDER BY created_at DESC, rowid DESC LIMIT 1", (app_id, name)).fetchone()
        if row is None:
            raise NotFound(f"no {'' if include_terminated else 'running '}sandbox named "
                           f"{name!r} in this app")
        return self._row(row)

    def list_sandboxes(self, *, app_id: str | None = None, tags: dict[str, str] | None = None,
                       states: tuple[str, ...] = ("creating", "running"),
                       pooled: bool = False) -> list[SandboxRow]:
        """Sandboxes in ``states``, newest first (``pooled``: waiting ones too)."""
        sql = f"SELECT * FROM sandboxes WHERE state IN ({','.join('?' * len(states))})"
        if not pooled:
            sql += " AND pooled = 0"
        args: list[Any] = list(states)
        if app_id is not None:
            sql += " AND app_id = ?"
            args.append(app_id)
        for key, value in (tags or {}).items():
            sql += (" AND EXISTS (SELECT 1 FROM sandbox_tags t WHERE t.sandbox_id ="
                    " sandboxes.sandbox_id AND t.key = ? AND t.value = ?)")
            args += [key, value]
        sql += " ORDER BY created_at DESC"
        return [self._row(r) for r in self.db.execute(sql, args).fetchall()]

    def set_tags(self, sandbox_id: str, tags: dict[str, str]) -> None:
        self.sandbox(sandbox_id)
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM sandbox_tags WHERE sandbox_id = ?", (sandbox_id,))
            self.db.executemany(
                "INSERT INTO sandbox_tags (sandbox_id, key, value) VALUES (?, ?, ?)",
                [(sandbox_id, k, v) for k, v in tags.items()],
            )

    # execs ------------------------------------------------------------------------------
    def insert_exec(self, exec_id: str, sandbox_id: str, argv: list[str],
                    ended: tuple[int, bool] | None = None) -> None:
        """Record an exec: running, or already ``ended`` (its code, whether it timed out),
        which saves a command that ends before its start is answered a second write."""
        now = time.time()
        code, timed_out = ended if ended is not None else (None, False)
        self.db.execute(
            "INSERT INTO execs (exec_id, sandbox_id, argv, state, returncode, timed_out,"
            " created_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (exec_id, sandbox_id, json.dumps(argv), "running" if ended is None else "exited",
             code, int(timed_out), now, None if ended is None else now),
        )

    def finish_exec(self, exec_id: str, returncode: int, timed_out: bool) -> None:
        self.db.execute(
            "UPDATE execs SET state = 'exited', returncode = ?, timed_out = ?, finished_at = ?"
            " WHERE exec_id = ? AND state = 'running'",
            (returncode, int(timed_out), time.time(), exec_id),
        )

    def exec_row(self, exec_id: str) -> dict[str, Any]:
        row = self.db.execute("SELECT * FROM execs WHERE exec_id = ?", (exec_id,)).fetchone()
        if row is None:
            raise NotFound(f"exec {exec_id!r} not found")
        data = dict(row)
        data["argv"] = json.loads(data["argv"])
        return data

    def orphan_execs(self) -> None:
        """Execs running when a daemon died lost their pipes with it; mark them ended."""
        self.db.execute(
            "UPDATE execs SET state = 'exited', returncode = -1, finished_at = ?"
            " WHERE state = 'running'", (time.time(),),
        )
