"""hutch.Secret: Modal's client-side secrets (from_dict, from_local_environ, from_dotenv)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hutch import Secret
from hutch.exception import InvalidError, NotFoundError
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


def test_from_name_is_not_found() -> None:
    with pytest.raises(NotFoundError, match="my-secret"):
        Secret.from_name("my-secret")
    with pytest.raises(NotFoundError):
        Secret.from_name("other", required_keys=["KEY"])


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
