"""The apps of the engine's store: named namespaces of sandboxes, with tags and the time
they were last stopped (Modal's ``App.lookup``, ``set_tags``, ``info``, ``stop``).

A part of :class:`hutch.engine.storage.store.Store` (it works on its database), kept apart
so that the store's module stays readable.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from hutch.engine.errors import NotFound
from hutch.engine.storage.recordids import new_id


class AppRecords:
    db: sqlite3.Connection

    def app_by_name(self, name: str, *, create: bool) -> tuple[str, str]:
        row = self.db.execute("SELECT app_id, name FROM apps WHERE name = ?", (name,)).fetchone()
        if row is None:
            if not create:
                raise NotFound(f"App {name!r} not found")
            self.db.execute(
                "INSERT OR IGNORE INTO apps (app_id, name, created_at) VALUES (?, ?, ?)",
                (new_id("ap"), name, time.time()),
            )
            row = self.db.execute("SELECT app_id, name FROM apps WHERE name = ?",
                                  (name,)).fetchone()
        return row["app_id"], row["name"]

    def app_by_id(self, app_id: str) -> tuple[str, str]:
        row = self.db.execute("SELECT app_id, name FROM apps WHERE app_id = ?",
                              (app_id,)).fetchone()
        if row is None:
            raise NotFound(f"App {app_id!r} not found")
        return row["app_id"], row["name"]

    def app(self, app_id: str) -> dict[str, Any]:
        """An app's record: ``app_id``, ``name``, ``created_at`` and ``tags``."""
        row = self.db.execute("SELECT * FROM apps WHERE app_id = ?", (app_id,)).fetchone()
        if row is None:
            raise NotFound(f"App {app_id!r} not found")
        tags = {r["key"]: r["value"] for r in self.db.execute(
            "SELECT key, value FROM app_tags WHERE app_id = ?", (app_id,))}
        return {"app_id": row["app_id"], "name": row["name"], "created_at": row["created_at"],
                "stopped_at": row["stopped_at"], "tags": tags}

    def set_app_tags(self, app_id: str, tags: dict[str, str]) -> None:
        """Replace the app's tags (Modal's ``App.set_tags``)."""
        self.app_by_id(app_id)
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM app_tags WHERE app_id = ?", (app_id,))
            self.db.executemany("INSERT INTO app_tags (app_id, key, value) VALUES (?, ?, ?)",
                                [(app_id, k, v) for k, v in tags.items()])

    def mark_app_stopped(self, app_id: str, stopped: bool = True) -> None:
        """Record that the app was stopped (``App.stop``), or is in use again."""
        self.db.execute("UPDATE apps SET stopped_at = ? WHERE app_id = ?",
                        (time.time() if stopped else None, app_id))
