"""A sample's compose project at run time, without an engine: its networks' names and
labels, and the order in which its services start (sandboxes stood in for by fakes)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import anyio
import pytest

import hutch
from hutch.integrations.inspect import compose, project
from hutch.integrations.inspect.compose import ServiceSpec


def test_network_names_are_valid_and_a_samples_own() -> None:
    doc = {"networks": {"a": {}, "b": {}},
           "services": {"default": {"image": "x", "networks": ["a"]},
                        "one": {"image": "x", "networks": ["a"]},
                        "two": {"image": "x", "networks": ["b"]},
                        "three": {"image": "x", "networks": ["b"]}}}
    specs = compose.compose_services(doc, Path("/"), {})
    run = project.new_run()
    names = project.network_names(specs, "a task/with odd:chars" * 5, run)
    assert set(names) == {"a", "b"}
    for name in names.values():
        assert re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name) and name.startswith("inspect-")
        assert run in name
    assert len(set(names.values())) == 2
    assert project.network_names(compose.default_services(), "t", run) == {}


def test_inspects_networks_are_told_by_prefix_and_label() -> None:
    def network(name: str, labels: dict[str, str]) -> hutch.Network:
        return hutch.Network(name, info={"network_id": "net-1", "name": name,
                                         "subnet": "10.89.0.0/24", "labels": labels})

    mine = project.labels("task", "abc")
    assert project.is_inspects(network("inspect-task-abc", mine))
    assert project.is_inspects(network("inspect-task-abc", mine), "abc")
    assert not project.is_inspects(network("inspect-task-abc", mine), "other")
    assert not project.is_inspects(network("inspect-x", {}))  # a user's, named alike
    assert not project.is_inspects(network("mine", mine))


class FakeSandbox:
    def __init__(self, log: list[str], name: str, code: int = 0) -> None:
        self.log, self.name, self.returncode = log, name, code
        self.wait_until_ready = self._Aio(self._ready)
        self.wait = self._Aio(self._wait)

    class _Aio:
        def __init__(self, fn: Any) -> None:
            self.aio = fn

    async def _ready(self, timeout: float) -> None:
        await anyio.sleep(0.01)
        self.log.append(f"{self.name} healthy")

    async def _wait(self, raise_on_termination: bool = True) -> None:
        await anyio.sleep(0.01)
        self.log.append(f"{self.name} ended")


def _run(specs: list[ServiceSpec], codes: dict[str, int] | None = None) -> list[str]:
    log: list[str] = []

    async def start(spec: ServiceSpec, network: str | None) -> Any:
        log.append(f"{spec.name} on {network}")
        return FakeSandbox(log, spec.name, (codes or {}).get(spec.name, 0))

    names = project.network_names(specs, "t", "r")
    anyio.run(project.start_services, specs, start, names)
    return log


def test_services_start_in_dependency_order() -> None:
    doc = {"services": {
        "default": {"image": "a", "depends_on": {
            "db": {"condition": "service_healthy"},
            "setup": {"condition": "service_completed_successfully"}}},
        "db": {"image": "b", "healthcheck": {"test": "true"}},
        "setup": {"image": "c", "command": "true", "depends_on": ["db"]},
        "cache": {"image": "d", "healthcheck": {"test": "true"}}}}
    log = _run(compose.compose_services(doc, Path("/"), {}))
    assert log.index("db on inspect-t-r") < log.index("setup on inspect-t-r")
    assert log.index("db healthy") < log.index("default on inspect-t-r")
    assert log.index("setup ended") < log.index("default on inspect-t-r")
    # every service with a healthcheck is waited for (compose up --wait)
    assert "cache healthy" in log and len(log) == 7


def test_a_dependency_that_fails_stops_the_start() -> None:
    doc = {"services": {
        "default": {"image": "a", "depends_on": {
            "setup": {"condition": "service_completed_successfully"}}},
        "setup": {"image": "c", "command": "false"}}}
    with pytest.raises(BaseException) as caught:  # (an ExceptionGroup of anyio's)
        _run(compose.compose_services(doc, Path("/"), {}), {"setup": 1})
    assert "exited with 1" in repr(caught.value)
