"""``hutch secret``: named secrets from the command line, as ``modal secret`` manages them
(no engine needed: they are the user's files)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from hutch import Secret
from hutch.tools.cli import main


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HUTCH_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def test_create_list_delete(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / ".env").write_text("FROM_FILE=dotenv-value\nA=overridden\n")
    assert main(["secret", "create", "api", "A=cli-value", "B=x=y",
                 "--from-dotenv", str(tmp_path / ".env")]) == 0
    assert Secret.from_name("api").env() == {"A": "cli-value", "B": "x=y",
                                             "FROM_FILE": "dotenv-value"}
    assert main(["secret", "create", "api", "A=again"]) == 125  # exists
    assert main(["secret", "create", "api", "A=again", "--force"]) == 0
    assert Secret.from_name("api").env() == {"A": "again"}
    assert main(["secret", "list"]) == 0
    out = capsys.readouterr().out
    assert "api" in out and "A" in out and "again" not in out and "cli-value" not in out
    with pytest.raises(SystemExit, match="--yes"):
        main(["secret", "delete", "api"])  # (not a terminal: no question asked)
    assert main(["secret", "delete", "api", "--yes"]) == 0
    assert main(["secret", "delete", "api", "--yes"]) == 125  # NotFoundError


def test_a_value_from_stdin_stays_off_the_command_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("from-a-pipe\n"))
    assert main(["secret", "create", "piped", "TOKEN=-", "OTHER=x"]) == 0
    assert Secret.from_name("piped").env() == {"TOKEN": "from-a-pipe", "OTHER": "x"}
    with pytest.raises(SystemExit, match="only one"):
        main(["secret", "create", "two", "A=-", "B=-"])
    assert main(["secret", "create", "literal", "URL=http://a/?q=-"]) == 0  # not stdin
    assert Secret.from_name("literal").env() == {"URL": "http://a/?q=-"}


def test_values_must_be_key_value(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        main(["secret", "create", "bad", "NOVALUE"])
    with pytest.raises(SystemExit, match="at least one"):
        main(["secret", "create", "empty"])
    assert main(["secret", "create", "bad", "1A=x"]) == 125  # not a variable name
    with pytest.raises(SystemExit, match="no file"):
        main(["secret", "create", "bad", "A=1", "--from-dotenv", "/nonexistent/.env"])
    with pytest.raises(SystemExit, match="needs a secret name first") as refused:
        main(["secret", "create", "A=sk-live-1"])  # the name forgotten: nothing echoed
    assert "sk-live-1" not in str(refused.value)
