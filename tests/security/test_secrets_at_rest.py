"""Secret values do not outlive their sandbox in the engine's state database.

A sandbox's environment (``secrets=`` merged with ``env``) is recorded in ``state.db`` so
that a restarted engine can start its commands with it.  It used to stay there after the
sandbox ended, in plaintext, in a file of mode 0644 (and in SQLite's WAL and free pages).
Now the files are the user's alone (0600), the values are wiped when the sandbox is
recorded as ended, SQLite overwrites deleted content (``secure_delete``) and the WAL is
truncated after the wipe, so no byte of a value is left in any of the files.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import uuid
from pathlib import Path

import hutch


def _state_files() -> list[Path]:
    db = Path(os.environ["HUTCH_DATA_DIR"]) / "state.db"
    return [p for p in (db, db.with_name("state.db-wal"), db.with_name("state.db-shm"))
            if p.exists()]


def _holding(marker: bytes) -> list[str]:
    return [p.name for p in _state_files() if marker in p.read_bytes()]


def test_secret_values_are_gone_from_the_state_files_once_the_sandbox_ended(
        engine: dict[str, object]) -> None:
    secret = f"hutch-secret-{uuid.uuid4().hex}"
    plain = f"hutch-env-{uuid.uuid4().hex}"
    sb = hutch.Sandbox.create(secrets=[hutch.Secret.from_dict({"API_TOKEN": secret})],
                              env={"PLAIN_VALUE": plain}, timeout=60)
    try:
        out = sb.exec("sh", "-c", "echo $API_TOKEN $PLAIN_VALUE").stdout.read()
        assert out == f"{secret} {plain}\n"  # the sandbox did get them
        # While it runs, the engine keeps them (a restarted engine needs them): the test
        # looks in the right files.
        assert _holding(secret.encode())
    finally:
        sb.terminate(wait=True)

    for marker in (secret, plain):
        assert _holding(marker.encode()) == [], f"{marker} left in the state files"

    db = Path(os.environ["HUTCH_DATA_DIR"]) / "state.db"
    with sqlite3.connect(db) as conn:  # what the WAL held goes into the database file
        conn.execute("PRAGMA wal_checkpoint(FULL)")
    conn.close()
    for marker in (secret, plain):
        assert _holding(marker.encode()) == [], f"{marker} left after a checkpoint"

    # The ended sandbox is still known, with its outcome.
    again = hutch.Sandbox.from_id(sb.object_id)
    assert again.poll() is not None

    for path in _state_files():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
