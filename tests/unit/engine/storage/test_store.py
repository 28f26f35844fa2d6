"""hutch.engine.storage.store: the SQLite state of apps, sandboxes, names, tags and execs."""

from __future__ import annotations

import os
import re
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hutch.engine.errors import AlreadyExists, NotFound
from hutch.engine.storage.recordids import new_id
from hutch.engine.storage.store import SandboxSpec, Store

ID = re.compile(r"^sb-[A-Za-z0-9]{22}$")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    s = Store(db_path)
    yield s
    s.close()


@pytest.fixture
def app_id(store: Store) -> str:
    return store.app_by_name("main", create=True)[0]


def _insert(store: Store, app_id: str, name: str | None = None,
            tags: dict[str, str] | None = None, **kw: Any) -> str:
    sandbox_id = kw.pop("sandbox_id", None) or new_id("sb")
    store.insert_sandbox(
        sandbox_id=sandbox_id, app_id=app_id, name=name, image="img:1",
        spec=SandboxSpec(argv=["sleep", "inf"]), timeout=kw.pop("timeout", 60.0),
        runtime="crun",
        tags=tags or {},
    )
    return sandbox_id


def _ids(rows: list[Any]) -> set[str]:
    return {r.sandbox_id for r in rows}


def test_new_id_shape() -> None:
    ids = {new_id("sb") for _ in range(200)}
    assert len(ids) == 200
    for i in ids:
        assert ID.match(i), i
    assert re.match(r"^ex-[A-Za-z0-9]{22}$", new_id("ex"))


def test_wal_mode(store: Store, db_path: Path) -> None:
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    # WAL is a property of the file: a second, independent connection sees it too.
    other = sqlite3.connect(db_path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    finally:
        other.close()
    assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_app_by_name(store: Store) -> None:
    with pytest.raises(NotFound):
        store.app_by_name("nope", create=False)
    app_id, name = store.app_by_name("nope", create=True)
    assert name == "nope"
    assert re.match(r"^ap-[A-Za-z0-9]{22}$", app_id)
    assert store.app_by_name("nope", create=False) == (app_id, "nope")
    assert store.app_by_name("nope", create=True) == (app_id, "nope")  # idempotent
    assert store.app_by_id(app_id) == (app_id, "nope")
    other, _ = store.app_by_name("other", create=True)
    assert other != app_id
    with pytest.raises(NotFound):
        store.app_by_id("ap-unknown")


def test_insert_and_read_back(store: Store, app_id: str) -> None:
    sid = _insert(store, app_id, name="box", tags={"k": "v"}, timeout=30.0)
    row = store.sandbox(sid)
    assert row.sandbox_id == sid
    assert row.app_id == app_id
    assert row.name == "box"
    assert row.state == "creating"
    assert row.image == "img:1"
    assert row.spec == SandboxSpec(argv=["sleep", "inf"])
    assert row.runtime == "crun"
    assert row.tags == {"k": "v"}
    assert row.timeout == 30.0
    assert row.deadline == pytest.approx(row.created_at + 30.0)
    assert row.returncode is None and row.finished_at is None and row.init_pid is None

    store.mark_running(sid, 4242)
    row = store.sandbox(sid)
    assert (row.state, row.init_pid) == ("running", 4242)
    assert store.sandbox_by_name(app_id, "box").sandbox_id == sid


def test_state_survives_reopen(db_path: Path) -> None:
    s = Store(db_path)
    app_id, _ = s.app_by_name("persist", create=True)
    sid = _insert(s, app_id, name="p", tags={"a": "1"})
    s.close()
    s2 = Store(db_path)
    try:
        assert s2.app_by_name("persist", create=False)[0] == app_id
        assert s2.sandbox(sid).tags == {"a": "1"}
    finally:
        s2.close()


def test_duplicate_live_name(store: Store, app_id: str) -> None:
    first = _insert(store, app_id, name="dup")
    with pytest.raises(AlreadyExists):
        _insert(store, app_id, name="dup")
    # the failed insert left nothing behind (no row, no tags)
    assert _ids(store.list_sandboxes(app_id=app_id)) == {first}
    n = store.db.execute("SELECT count(*) FROM sandbox_tags").fetchone()[0]
    assert n == 0
    # still a duplicate once running
    store.mark_running(first, 1)
    with pytest.raises(AlreadyExists):
        _insert(store, app_id, name="dup", tags={"x": "y"})
    assert store.db.execute("SELECT count(*) FROM sandbox_tags").fetchone()[0] == 0


def test_name_reusable_after_exit(store: Store, app_id: str) -> None:
    first = _insert(store, app_id, name="reuse")
    store.mark_running(first, 1)
    store.mark_exited(first, 0, "exited")
    second = _insert(store, app_id, name="reuse")
    assert second != first
    assert store.sandbox_by_name(app_id, "reuse").sandbox_id == second
    # and again: any number of exited sandboxes may share the name
    store.mark_exited(second, 1, "terminated")
    third = _insert(store, app_id, name="reuse")
    assert store.sandbox_by_name(app_id, "reuse").sandbox_id == third


def test_same_name_in_other_app_and_unnamed(store: Store, app_id: str) -> None:
    other, _ = store.app_by_name("other", create=True)
    _insert(store, app_id, name="n")
    _insert(store, other, name="n")  # names are per app
    _insert(store, app_id)
    _insert(store, app_id)  # any number of unnamed sandboxes
    assert len(store.list_sandboxes(app_id=app_id)) == 3


def test_duplicate_sandbox_id_is_not_reported_as_name_clash(store: Store, app_id: str) -> None:
    # BUG (hutch/engine/storage/store.py insert_sandbox): any "UNIQUE" IntegrityError, including the
    # sandbox_id PRIMARY KEY, is turned into AlreadyExists("a running sandbox named 'b'
    # already exists"), although no sandbox is named 'b'.  Only the sandbox_live_name index
    # means a name clash; this test expects the correct behaviour.
    sid = _insert(store, app_id, name="a")
    with pytest.raises(Exception) as info:
        _insert(store, app_id, name="b", sandbox_id=sid)
    assert not isinstance(info.value, AlreadyExists), info.value
    assert store.sandbox(sid).name == "a"


def test_mark_exited_first_outcome_wins(store: Store, app_id: str) -> None:
    sid = _insert(store, app_id)
    store.mark_running(sid, 10)
    store.mark_exited(sid, 137, "timeout")
    store.mark_exited(sid, 0, "exited")
    row = store.sandbox(sid)
    assert (row.state, row.returncode, row.exit_reason) == ("exited", 137, "timeout")
    assert row.finished_at is not None and row.finished_at >= row.created_at


def test_sandbox_by_name_ignores_exited(store: Store, app_id: str) -> None:
    sid = _insert(store, app_id, name="gone")
    store.mark_exited(sid, 0, "exited")
    with pytest.raises(NotFound):
        store.sandbox_by_name(app_id, "gone")
    with pytest.raises(NotFound):
        store.sandbox_by_name(app_id, "never")


def test_sandbox_by_name_including_terminated(store: Store, app_id: str) -> None:
    """Modal's ``include_terminated``: the running one, else the newest that ended."""
    first = _insert(store, app_id, name="n")
    store.mark_exited(first, 0, "exited")
    second = _insert(store, app_id, name="n")
    store.mark_exited(second, 1, "terminated")
    assert store.sandbox_by_name(app_id, "n", include_terminated=True).sandbox_id == second
    third = _insert(store, app_id, name="n")
    store.mark_running(third, 1)
    assert store.sandbox_by_name(app_id, "n", include_terminated=True).sandbox_id == third
    with pytest.raises(NotFound, match="no sandbox named 'never'"):
        store.sandbox_by_name(app_id, "never", include_terminated=True)


def test_unknown_sandbox(store: Store) -> None:
    with pytest.raises(NotFound):
        store.sandbox("sb-doesnotexist")
    with pytest.raises(NotFound):
        store.set_tags("sb-doesnotexist", {"a": "b"})


def test_list_by_state_and_app(store: Store, app_id: str) -> None:
    other, _ = store.app_by_name("other", create=True)
    a = _insert(store, app_id)
    b = _insert(store, app_id)
    c = _insert(store, other)
    store.mark_running(b, 5)
    store.mark_exited(a, 0, "exited")
    assert _ids(store.list_sandboxes()) == {b, c}
    assert _ids(store.list_sandboxes(app_id=app_id)) == {b}
    assert _ids(store.list_sandboxes(app_id=other)) == {c}
    assert _ids(store.list_sandboxes(states=("exited",))) == {a}
    all_states = ("creating", "running", "exited")
    assert _ids(store.list_sandboxes(app_id=app_id, states=all_states)) == {a, b}


def test_list_newest_first(store: Store, app_id: str) -> None:
    ids = [_insert(store, app_id) for _ in range(3)]
    # created_at comes from time.time(); make the order unambiguous
    for i, sid in enumerate(ids):
        store.db.execute("UPDATE sandboxes SET created_at = ? WHERE sandbox_id = ?",
                         (1000.0 + i, sid))
    assert [r.sandbox_id for r in store.list_sandboxes()] == list(reversed(ids))


def test_tag_filter_is_superset_match(store: Store, app_id: str) -> None:
    ab = _insert(store, app_id, tags={"a": "1", "b": "2"})
    a_only = _insert(store, app_id, tags={"a": "1"})
    a2 = _insert(store, app_id, tags={"a": "2"})
    none = _insert(store, app_id)
    assert _ids(store.list_sandboxes(tags={"a": "1"})) == {ab, a_only}
    assert _ids(store.list_sandboxes(tags={"a": "2"})) == {a2}
    assert _ids(store.list_sandboxes(tags={"a": "1", "b": "2"})) == {ab}
    assert _ids(store.list_sandboxes(tags={"a": "1", "b": "3"})) == set()
    assert _ids(store.list_sandboxes(tags={"b": "1"})) == set()  # value, not key only
    assert _ids(store.list_sandboxes(tags={})) == {ab, a_only, a2, none}
    assert _ids(store.list_sandboxes(tags=None)) == {ab, a_only, a2, none}


def test_tag_values_are_not_sql(store: Store, app_id: str) -> None:
    sid = _insert(store, app_id, tags={"q": "x' OR '1'='1"})
    _insert(store, app_id, tags={"q": "other"})
    assert _ids(store.list_sandboxes(tags={"q": "x' OR '1'='1"})) == {sid}
    assert _ids(store.list_sandboxes(tags={"q": "%"})) == set()


def test_set_tags_replaces(store: Store, app_id: str) -> None:
    sid = _insert(store, app_id, tags={"a": "1", "b": "2"})
    store.set_tags(sid, {"c": "3"})
    assert store.sandbox(sid).tags == {"c": "3"}
    assert _ids(store.list_sandboxes(tags={"a": "1"})) == set()
    assert _ids(store.list_sandboxes(tags={"c": "3"})) == {sid}
    store.set_tags(sid, {})
    assert store.sandbox(sid).tags == {}


def test_delete_sandbox_cascades(store: Store, app_id: str) -> None:
    sid = _insert(store, app_id, tags={"a": "1"})
    store.insert_exec("ex-1", sid, ["true"])
    store.delete_sandbox(sid)
    with pytest.raises(NotFound):
        store.sandbox(sid)
    with pytest.raises(NotFound):
        store.exec_row("ex-1")
    assert store.db.execute("SELECT count(*) FROM sandbox_tags").fetchone()[0] == 0


def test_exec_rows(store: Store, app_id: str) -> None:
    sid = _insert(store, app_id)
    store.insert_exec("ex-a", sid, ["echo", "a b"])
    row = store.exec_row("ex-a")
    assert row["argv"] == ["echo", "a b"]
    assert row["state"] == "running"
    assert row["returncode"] is None
    assert row["sandbox_id"] == sid

    store.finish_exec("ex-a", 3, timed_out=True)
    row = store.exec_row("ex-a")
    assert (row["state"], row["returncode"], bool(row["timed_out"])) == ("exited", 3, True)
    assert row["finished_at"] is not None
    # a finished exec keeps its first outcome
    store.finish_exec("ex-a", 0, timed_out=False)
    assert store.exec_row("ex-a")["returncode"] == 3

    # an exec that ended before its start was answered: one write, already ended
    store.insert_exec("ex-quick", sid, ["true"], ended=(124, True))
    row = store.exec_row("ex-quick")
    assert (row["state"], row["returncode"], bool(row["timed_out"])) == ("exited", 124, True)
    assert row["finished_at"] == row["created_at"]

    with pytest.raises(NotFound):
        store.exec_row("ex-unknown")
    # execs belong to an existing sandbox
    with pytest.raises(sqlite3.IntegrityError):
        store.insert_exec("ex-b", "sb-unknown", ["true"])


def test_orphan_execs(store: Store, app_id: str) -> None:
    sid = _insert(store, app_id)
    store.insert_exec("ex-running", sid, ["sleep", "1"])
    store.insert_exec("ex-done", sid, ["true"])
    store.finish_exec("ex-done", 0, timed_out=False)
    store.orphan_execs()
    orphan = store.exec_row("ex-running")
    assert orphan["state"] == "exited"
    assert orphan["returncode"] == -1
    assert orphan["finished_at"] is not None
    done = store.exec_row("ex-done")
    assert (done["state"], done["returncode"]) == ("exited", 0)


# secrets at rest ------------------------------------------------------------------------
SECRET = b"hutch-unit-secret-5f0c2b9e"


def _state_files(db_path: Path) -> list[Path]:
    return [p for p in (db_path, db_path.with_name("state.db-wal"),
                        db_path.with_name("state.db-shm")) if p.exists()]


def _insert_secret(store: Store, app_id: str) -> str:
    sandbox_id = new_id("sb")
    store.insert_sandbox(
        sandbox_id=sandbox_id, app_id=app_id, name=None, image="img:1",
        spec=SandboxSpec(argv=["sleep", "inf"], env={"TOKEN": SECRET.decode()}, cgroup=True,
                         volumes=["v"], workdir="/"),
        timeout=60.0, runtime="crun", tags={})
    return sandbox_id


def test_state_files_are_the_users_alone(db_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = Store(db_path)
        _insert_secret(store, store.app_by_name("main", create=True)[0])
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in _state_files(db_path)}
        store.close()
    finally:
        os.umask(old)
    assert set(modes) >= {"state.db", "state.db-wal"}
    assert set(modes.values()) == {0o600}, modes


def test_files_of_an_older_engine_are_made_private(db_path: Path) -> None:
    Store(db_path).close()
    db_path.chmod(0o644)  # what engines made before
    Store(db_path).close()
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600


def test_an_ended_sandbox_keeps_no_environment(store: Store, app_id: str,
                                               db_path: Path) -> None:
    sid = _insert_secret(store, app_id)
    assert any(SECRET in p.read_bytes() for p in _state_files(db_path))
    store.mark_exited(sid, 0, "exited")
    row = store.sandbox(sid)
    assert row.spec.env == {}
    # what the engine still reads of an ended sandbox is kept
    assert (row.spec.cgroup, row.spec.volumes, row.spec.argv) == \
        (True, ["v"], ["sleep", "inf"])
    assert (row.state, row.returncode) == ("exited", 0)
    for path in _state_files(db_path):
        assert SECRET not in path.read_bytes(), path.name
    store.db.execute("PRAGMA wal_checkpoint(FULL)")
    for path in _state_files(db_path):
        assert SECRET not in path.read_bytes(), path.name


def test_sandboxes_ended_under_an_older_engine_are_wiped_at_open(db_path: Path) -> None:
    store = Store(db_path)
    sid = _insert_secret(store, store.app_by_name("main", create=True)[0])
    running = _insert_secret(store, store.app_by_name("main", create=True)[0])
    # an engine before the wipe recorded the end and kept the environment
    store.db.execute("UPDATE sandboxes SET state = 'exited' WHERE sandbox_id = ?", (sid,))
    store.close()
    store = Store(db_path)
    try:
        assert store.sandbox(sid).spec.env == {}
        assert store.sandbox(running).spec.env == {"TOKEN": SECRET.decode()}
        assert store.db.execute("PRAGMA secure_delete").fetchone()[0] == 1
    finally:
        store.close()
    # the running one's copy is the only one left: remove it to see no other remains
    store = Store(db_path)
    store.mark_exited(running, 0, "exited")
    store.close()
    for path in _state_files(db_path):
        assert SECRET not in path.read_bytes(), path.name
