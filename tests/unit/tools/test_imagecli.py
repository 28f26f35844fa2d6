"""``hutch image push``: its arguments and where its credentials come from (the engine
call itself is a stand-in here; tests/integration/test_image_interop.py pushes for real)."""

from __future__ import annotations

import pytest

from hutch.exception import NotFoundError
from hutch.tools import imagecli
from hutch.tools.cli import main, parser


@pytest.fixture
def pushed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str | None]]:
    calls: list[tuple[str, str, str | None]] = []

    def push(ref: str, dest: str, credentials: str | None = None) -> str:
        calls.append((ref, dest, credentials))
        if ref == "missing":
            raise NotFoundError("image 'missing' not found")
        return "sha256:" + "0" * 64

    monkeypatch.setattr(imagecli, "push_image", push)
    monkeypatch.delenv("REGISTRY_USERNAME", raising=False)
    monkeypatch.delenv("REGISTRY_PASSWORD", raising=False)
    return calls


def test_push_sends_the_ref_and_destination(pushed: list[tuple[str, str, str | None]],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["image", "push", "hutch/step:x", "docker://127.0.0.1:5000/n:1"]) == 0
    assert pushed == [("hutch/step:x", "docker://127.0.0.1:5000/n:1", None)]
    assert capsys.readouterr().out == (f"pushed hutch/step:x to 127.0.0.1:5000/n:1 "
                                       f"(sha256:{'0' * 64})\n")


def test_credentials_from_the_option_else_the_environment(
        pushed: list[tuple[str, str, str | None]], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("REGISTRY_USERNAME", "env-user")
    monkeypatch.setenv("REGISTRY_PASSWORD", "env-pass")
    assert main(["image", "push", "r", "h.example/n:1"]) == 0
    assert main(["image", "push", "r", "h.example/n:1", "--creds", "cli:pw"]) == 0
    monkeypatch.delenv("REGISTRY_PASSWORD")
    assert main(["image", "push", "r", "h.example/n:1"]) == 0  # half a pair: none
    assert [c[2] for c in pushed] == ["env-user:env-pass", "cli:pw", None]
    assert "pass" not in capsys.readouterr().out


def test_push_needs_a_ref_and_a_destination(pushed: list[tuple[str, str, str | None]],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="needs a target"):
        main(["image", "push"])
    with pytest.raises(SystemExit, match="needs a destination"):
        main(["image", "push", "r"])
    with pytest.raises(SystemExit, match="takes one argument"):
        main(["image", "inspect", "r", "extra"])
    assert main(["image", "push", "missing", "h.example/n:1"]) == 125
    assert "NotFoundError: image 'missing' not found" in capsys.readouterr().err
    assert pushed == [("missing", "h.example/n:1", None)]


def test_the_other_image_actions_parse_as_before() -> None:
    args = parser().parse_args(["image", "export", "hutch/step:x", "-o", "out.tar"])
    assert (args.action, args.target, args.output, args.dest) == ("export", "hutch/step:x",
                                                                  "out.tar", "")
    assert parser().parse_args(["image", "ls"]).func is imagecli.cmd_image
