"""``hutch network`` and ``hutch run --network``: their arguments, output and errors, over a
stand-in engine (tests/integration/test_network_cli.py runs them on the real one)."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

from hutch.exception import AlreadyExistsError, ConflictError, InvalidError, NotFoundError
from hutch.tools import cli, networkcli
from hutch.tools.cli import main, parser

NETWORK = {"network_id": "net-1", "name": "shop", "subnet": "10.89.3.0/24",
           "created_at": 1_700_000_000.0, "labels": {"team": "a"},
           "members": [{"sandbox_id": "sb-1", "address": "10.89.3.2",
                        "names": ["web", "sb-1"]}]}


class FakeEngine:
    """What the CLI asks the engine (through the SDK's ``Network`` and requests)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.busy = {"shop"}
        self.known = {"shop", "idle"}

    def create(self, name: str, *, labels: dict[str, str] | None = None) -> Any:
        self.calls.append(("create", name, labels))
        if name in self.known:
            raise AlreadyExistsError(f"Network {name!r} already exists")
        return argparse.Namespace(object_id="net-2")

    def delete(self, name: str) -> None:
        self.calls.append(("delete", name))
        if name in self.busy:
            raise ConflictError(f"Network {name!r} has running sandboxes: sb-1")
        if name not in self.known:
            raise NotFoundError(f"Network {name!r} not found")

    def from_name(self, name: str) -> None:
        if "/" in name:
            raise InvalidError(f"Invalid Network name: {name!r}")

    def request(self, method: str, path: str, **kw: Any) -> Any:
        self.calls.append((method, path))
        if path.endswith("/networks"):
            return {"networks": [NETWORK]}
        if path.endswith("/networks/shop"):
            return NETWORK
        raise NotFoundError("Network not found")


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    fake = FakeEngine()
    monkeypatch.setattr(networkcli, "Network", fake)
    monkeypatch.setattr(networkcli, "request_blocking", fake.request)
    return fake


def test_create_with_labels(engine: FakeEngine, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["network", "create", "new", "--label", "team=a", "--label", "x=1=2",
                 "--label", "team=b"]) == 0
    assert engine.calls == [("create", "new", {"team": "b", "x": "1=2"})]
    assert capsys.readouterr().out == "net-2\n"
    assert main(["network", "create", "shop"]) == 125
    assert "AlreadyExistsError: Network 'shop' already exists" in capsys.readouterr().err
    for bad in ("novalue", "=v"):
        with pytest.raises(SystemExit, match="--label expects KEY=VALUE"):
            main(["network", "create", "new", "--label", bad])


def test_ls_as_a_table_and_as_json(engine: FakeEngine,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["network", "ls"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["NAME", "SUBNET", "MEMBERS", "CREATED"]
    assert row.split()[:3] == ["shop", "10.89.3.0/24", "1"]
    assert main(["network", "ls", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [NETWORK]


def test_inspect_prints_the_members(engine: FakeEngine,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["network", "inspect", "shop"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["members"] == [{"sandbox_id": "sb-1", "address": "10.89.3.2",
                               "names": ["web", "sb-1"]}]
    assert main(["network", "inspect", "missing"]) == 125
    assert "NotFoundError" in capsys.readouterr().err
    assert main(["network", "inspect", "a/b"]) == 125  # refused before any request
    assert ("GET", "/v1/networks/a/b") not in engine.calls
    with pytest.raises(SystemExit):
        main(["network", "inspect"])


def test_rm_goes_on_past_a_busy_network(engine: FakeEngine,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["network", "rm", "shop", "idle", "missing"]) == 125
    assert [c[1] for c in engine.calls] == ["shop", "idle", "missing"]
    out, err = capsys.readouterr()
    assert out == "deleted idle\n"
    assert ("hutch: ConflictError: Network 'shop' has running sandboxes: sb-1 "
            "(terminate them first" in err)
    assert "hutch: NotFoundError: Network 'missing' not found" in err
    assert main(["network", "rm", "idle"]) == 0
    with pytest.raises(SystemExit):
        main(["network", "rm"])


def test_network_needs_an_action() -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["network"])
    with pytest.raises(SystemExit):
        parser().parse_args(["network", "prune"])


def test_run_joins_the_network_with_its_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[dict[str, Any]] = []

    class Created:
        def terminate(self, grace_period: float) -> None:
            pass

    def create(**kw: Any) -> Created:
        created.append(kw)
        return Created()

    monkeypatch.setattr(cli.Sandbox, "create", create)
    monkeypatch.setattr(cli, "_exec_and_stream", lambda sb, args: 7)
    assert main(["run", "--network", "shop", "--network-alias", "web", "--network-alias",
                 "api.shop", "--", "true"]) == 7
    assert main(["run", "--", "true"]) == 7
    assert created[0]["network"] == "shop"
    assert created[0]["network_aliases"] == ["web", "api.shop"]
    assert "network" not in created[1] and "network_aliases" not in created[1]
    with pytest.raises(SystemExit, match="--network-alias needs --network"):
        main(["run", "--network-alias", "web", "--", "true"])
    assert len(created) == 2


def test_run_options_of_the_parser() -> None:
    args = parser().parse_args(["run", "--network", "n", "--", "sh", "-c", "x"])
    assert networkcli.run_options(args) == {"network": "n", "network_aliases": []}
    assert args.cmd == ["--", "sh", "-c", "x"]
    assert networkcli.run_options(parser().parse_args(["run", "--", "true"])) == {}
