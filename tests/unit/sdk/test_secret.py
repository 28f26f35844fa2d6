"""hutch.Secret: Modal's client-side secrets (from_dict, from_local_environ, from_dotenv)."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from hutch import Secret
from hutch.exception import AlreadyExistsError, InvalidError, NotFoundError
from hutch.sdk.secret import merge_secrets

DOTENV = """\
A=1
export B=two
C='single # quoted'
D="double\\nline"
# a comment line
E=plain # trailing comment
G=
"""


def write_dotenv(directory: Path, text: str, filename: str = ".env") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    path.write_text(text)
    return path


# from_dict --------------------------------------------------------------------------------
def test_from_dict_keeps_strings_and_drops_none() -> None:
    secret = Secret.from_dict({"A": "1", "B": None, "C": ""})
    assert secret.env() == {"A": "1", "C": ""}
    assert secret.keys() == ["A", "C"]


def test_from_dict_default_is_empty() -> None:
    assert Secret.from_dict().env() == {}


def test_from_dict_copies_its_input() -> None:
    source = {"A": "1"}
    secret = Secret.from_dict(source)
    source["A"] = "changed"
    source["B"] = "added"
    assert secret.env() == {"A": "1"}
    secret.env()["A"] = "mutated"  # env() hands out a copy
    assert secret.env() == {"A": "1"}


@pytest.mark.parametrize("bad", [
    {"A": 1}, {"A": b"bytes"}, {1: "a"}, {("A",): "a"}, ["A=1"], "A=1", None,
])
def test_from_dict_rejects_non_str_dicts(bad: Any) -> None:
    with pytest.raises(InvalidError):
        Secret.from_dict(bad)


# from_local_environ -----------------------------------------------------------------------
def test_from_local_environ_takes_the_current_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUTCH_T_ONE", "1")
    monkeypatch.setenv("HUTCH_T_TWO", "two words")
    monkeypatch.setenv("HUTCH_T_EMPTY", "")
    monkeypatch.setenv("HUTCH_T_OTHER", "not asked for")
    secret = Secret.from_local_environ(["HUTCH_T_ONE", "HUTCH_T_TWO", "HUTCH_T_EMPTY"])
    assert secret.env() == {"HUTCH_T_ONE": "1", "HUTCH_T_TWO": "two words", "HUTCH_T_EMPTY": ""}
    monkeypatch.setenv("HUTCH_T_ONE", "later")  # a snapshot, as Modal's from_dict of os.environ
    assert secret.env()["HUTCH_T_ONE"] == "1"


def test_from_local_environ_names_a_missing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUTCH_T_PRESENT", "x")
    monkeypatch.delenv("HUTCH_T_ABSENT", raising=False)
    with pytest.raises(InvalidError, match="HUTCH_T_ABSENT"):
        Secret.from_local_environ(["HUTCH_T_PRESENT", "HUTCH_T_ABSENT"])


def test_from_local_environ_wants_a_list_of_names() -> None:
    with pytest.raises(InvalidError):
        Secret.from_local_environ("PATH")  # type: ignore[arg-type]


# from_dotenv ------------------------------------------------------------------------------
def test_from_dotenv_parses_quotes_export_and_comments(tmp_path: Path) -> None:
    write_dotenv(tmp_path, DOTENV)
    assert Secret.from_dotenv(tmp_path).env() == {
        "A": "1", "B": "two", "C": "single # quoted", "D": "double\nline", "E": "plain",
        "G": "",
    }


def test_from_dotenv_without_path_searches_cwd_then_parents(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_dotenv(tmp_path, "WHERE=root\nONLY_ROOT=yes\n")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert Secret.from_dotenv().env() == {"WHERE": "root", "ONLY_ROOT": "yes"}
    # The nearest file wins, and files are not merged.
    write_dotenv(tmp_path / "a", "WHERE=middle\n")
    assert Secret.from_dotenv().env() == {"WHERE": "middle"}
    write_dotenv(deep, "WHERE=cwd\n")
    assert Secret.from_dotenv().env() == {"WHERE": "cwd"}


def test_from_dotenv_filename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_dotenv(tmp_path, "WHICH=default\n")
    write_dotenv(tmp_path, "WHICH=dev\n", filename=".env-dev")
    monkeypatch.chdir(tmp_path)
    assert Secret.from_dotenv(filename=".env-dev").env() == {"WHICH": "dev"}
    assert Secret.from_dotenv(tmp_path, filename=".env-dev").env() == {"WHICH": "dev"}


def test_from_dotenv_path_is_a_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_dotenv(tmp_path / "project", "WHERE=project\n")
    write_dotenv(tmp_path / "elsewhere", "WHERE=cwd\n")
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert Secret.from_dotenv(tmp_path / "project").env() == {"WHERE": "project"}
    assert Secret.from_dotenv(str(tmp_path / "project")).env() == {"WHERE": "project"}


def test_from_dotenv_path_is_a_file_uses_its_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_dotenv(tmp_path / "project", "WHERE=project\n")
    script = tmp_path / "project" / "script.py"  # as in Modal's from_dotenv(__file__)
    script.write_text("print('hi')\n")
    monkeypatch.chdir(tmp_path)
    assert Secret.from_dotenv(script).env() == {"WHERE": "project"}
    assert Secret.from_dotenv(str(script)).env() == {"WHERE": "project"}


def test_from_dotenv_path_walks_up_to_the_root(tmp_path: Path) -> None:
    write_dotenv(tmp_path, "WHERE=root\n")
    script = tmp_path / "pkg" / "module.py"
    script.parent.mkdir()
    script.write_text("")
    assert Secret.from_dotenv(script).env() == {"WHERE": "root"}


def test_from_dotenv_missing_file_is_an_empty_secret(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    # A file name no directory up to / has, so the search really finds nothing.
    name = ".env-hutch-test-absent"
    assert Secret.from_dotenv(filename=name).env() == {}
    assert Secret.from_dotenv(empty, filename=name).env() == {}


# repr, from_name ---------------------------------------------------------------------------
def test_repr_shows_names_never_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    value = "hunter2-very-secret"
    monkeypatch.setenv("HUTCH_T_PASSWORD", value)
    write_dotenv(tmp_path, f"DOTENV_PASSWORD={value}\n")
    secrets = [
        Secret.from_dict({"DICT_PASSWORD": value}),
        Secret.from_local_environ(["HUTCH_T_PASSWORD"]),
        Secret.from_dotenv(tmp_path),
    ]
    for secret, key in zip(secrets, ["DICT_PASSWORD", "HUTCH_T_PASSWORD", "DOTENV_PASSWORD"],
                           strict=True):
        assert secret.env() == {key: value}
        for text in (repr(secret), str(secret), f"{secret!r} {[secret]}"):
            assert key in text
            assert value not in text


# named secrets -----------------------------------------------------------------------------
@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HUTCH_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def test_from_name_is_lazy_as_in_modal(data_dir: Path) -> None:
    """Declared at module level before it exists: an error only where it is used."""
    declared = Secret.from_name("my-secret", required_keys=["KEY"])
    assert declared.name == "my-secret" and "my-secret" in repr(declared)
    with pytest.raises(NotFoundError, match="my-secret"):
        declared.env()
    with pytest.raises(NotFoundError, match="my-secret"):
        declared.hydrate()
    Secret.objects.create("my-secret", {"KEY": "v1", "OTHER": "o"})
    assert declared.env() == {"KEY": "v1", "OTHER": "o"}
    assert declared.object_id is not None and declared.object_id.startswith("st-")
    assert "v1" not in repr(declared) and "KEY" in repr(declared)


def test_required_keys_are_checked_where_it_is_used(data_dir: Path) -> None:
    Secret.objects.create("partial", {"A": "1"})
    with pytest.raises(NotFoundError, match="missing the keys B"):
        Secret.from_name("partial", required_keys=["A", "B"]).env()
    assert Secret.from_name("partial", required_keys=["A"]).env() == {"A": "1"}


def test_objects_create_list_update_delete(data_dir: Path) -> None:
    Secret.objects.create("first", {"A": "1"})
    Secret.objects.create("second", {"B": "2"})
    with pytest.raises(AlreadyExistsError):
        Secret.objects.create("first", {"A": "other"})
    Secret.objects.create("first", {"A": "other"}, allow_existing=True)  # kept as it was
    assert Secret.from_name("first").env() == {"A": "1"}
    assert [s.name for s in Secret.objects.list()] == ["second", "first"]  # newest first
    assert [s.name for s in Secret.objects.list(max_objects=1)] == ["second"]
    first = Secret.from_name("first")
    first.update({"A": "2", "C": "3"})
    assert first.env() == {"A": "2", "C": "3"} == Secret.from_name("first").env()
    assert first.info().name == "first" and first.info().created_at.tzinfo is not None
    Secret.objects.delete("first")
    with pytest.raises(NotFoundError):
        Secret.objects.delete("first")
    Secret.objects.delete("first", allow_missing=True)
    assert [s.name for s in Secret.objects.list()] == ["second"]


def test_named_secrets_are_the_users_alone(data_dir: Path) -> None:
    Secret.objects.create("private", {"TOKEN": "hutch-value-in-file"})
    folder = data_dir / "secrets"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    (file,) = [p for p in folder.iterdir() if p.name != ".lock"]  # no partial file left
    assert file.name == "private.json" and stat.S_IMODE(file.stat().st_mode) == 0o600


@pytest.mark.parametrize("name", ["a/b", "../x", "", "x" * 65, None])
def test_bad_names_are_refused_before_any_file(data_dir: Path, name: Any) -> None:
    with pytest.raises(InvalidError, match="Invalid Secret name"):
        Secret.objects.create(name, {"A": "1"})
    with pytest.raises(InvalidError, match="Invalid Secret name"):
        Secret.from_name(name)
    assert not (data_dir / "secrets").exists() or not list((data_dir / "secrets").iterdir())


def test_concurrent_creates_of_one_name_store_one(data_dir: Path) -> None:
    """Eight threads create the same name: one wins whole, the others are told."""
    outcomes: list[str] = []

    def create(n: int) -> None:
        try:
            Secret.objects.create("raced", {"N": str(n)})
            outcomes.append("made")
        except AlreadyExistsError:
            outcomes.append("exists")

    threads = [threading.Thread(target=create, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["exists"] * 7 + ["made"]
    assert Secret.from_name("raced").env()["N"] in {str(n) for n in range(8)}


# merge_secrets ----------------------------------------------------------------------------
def test_merge_later_secrets_win_and_env_wins_over_all() -> None:
    first = Secret.from_dict({"A": "first", "B": "first", "C": "first"})
    second = Secret.from_dict({"B": "second", "C": "second", "D": "second"})
    env = {"C": "env", "E": "env"}
    assert merge_secrets([first, second], env) == {
        "A": "first", "B": "second", "C": "env", "D": "second", "E": "env",
    }
    assert merge_secrets([second, first], {}) == {
        "A": "first", "B": "first", "C": "first", "D": "second",
    }
    assert merge_secrets((first,), {}) == first.env()
    assert env == {"C": "env", "E": "env"}  # the caller's env is not modified


def test_merge_without_secrets_is_a_copy_of_env() -> None:
    env = {"A": "1"}
    merged = merge_secrets(None, env)
    assert merged == env
    merged["B"] = "2"
    assert env == {"A": "1"}
    assert merge_secrets([], {}) == {}


@pytest.mark.parametrize("bad", [
    Secret.from_dict({"A": "1"}),  # one Secret, not a list of them
    [{"A": "1"}],
    ["A=1"],
    "A",
    42,
])
def test_merge_rejects_what_is_not_a_list_of_secrets(bad: Any) -> None:
    with pytest.raises(InvalidError):
        merge_secrets(bad, {})


def test_no_value_shows_in_a_record_repr(data_dir: Path) -> None:
    from hutch.sdk import secretstore

    Secret.objects.create("hidden", {"TOKEN": "sk-never-shown"})
    listed = Secret.objects.list()
    assert "sk-never-shown" not in repr(secretstore.read("hidden"))
    assert "sk-never-shown" not in repr(vars(listed[0]))


def test_what_another_user_could_plant_is_not_read(data_dir: Path, tmp_path: Path) -> None:
    """A symlink, a FIFO or a readable file in the folder is refused, never followed or
    waited on; a folder others can use is refused whole."""
    from hutch.sdk import secretstore

    Secret.objects.create("real", {"A": "1"})
    folder = data_dir / "secrets"
    (tmp_path / "attacker.json").write_text(json.dumps(
        {"name": "x", "secret_id": "st-x", "created_at": 0, "updated_at": 0,
         "env": {"OPENAI_BASE_URL": "https://evil"}}))
    (folder / "linked.json").symlink_to(tmp_path / "attacker.json")
    os.mkfifo(folder / "fifo.json")
    (folder / "loose.json").write_text((tmp_path / "attacker.json").read_text())
    (folder / "loose.json").chmod(0o644)
    (folder / "list.json").write_text("[]")
    (folder / "list.json").chmod(0o600)
    for name in ("linked", "fifo", "loose", "list"):
        with pytest.raises(InvalidError, match=name):
            secretstore.read(name)
    assert [s.name for s in Secret.objects.list()] == ["real"]
    folder.chmod(0o777)
    with pytest.raises(InvalidError, match="chmod 700"):
        Secret.from_name("real").env()


def test_an_update_does_not_bring_back_a_deleted_secret(data_dir: Path) -> None:
    from hutch.sdk import secretstore

    Secret.objects.create("gone", {"A": "1"})
    held = Secret.from_name("gone")
    Secret.objects.delete("gone")
    with pytest.raises(NotFoundError):
        held.update({"A": "2"})
    assert not (data_dir / "secrets" / "gone.json").exists()
    secretstore.replace("gone", {"A": "3"})  # (--force: made again, on purpose)
    assert Secret.from_name("gone").env() == {"A": "3"}
    assert [p.name for p in (data_dir / "secrets").iterdir() if p.suffix == ".part"] == []
