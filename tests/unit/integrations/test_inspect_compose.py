"""Docker configurations as inspect's docker provider takes them, turned into the hutch
sandboxes of a sample (no inspect_ai needed: the logic works on parsed YAML)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hutch.integrations.inspect import compose
from hutch.integrations.inspect.compose import ComposeError, ImageSource


def test_a_single_service_with_an_image_and_its_settings(tmp_path: Path) -> None:
    doc = {"services": {"default": {
        "image": "python:3.12-bookworm", "command": "tail -f /dev/null", "init": True,
        "working_dir": "/work", "environment": ["A=1", "FROM_HOST", "MISSING"],
        "network_mode": "none", "mem_limit": "1g", "cpus": 1.5, "x-local": True}}}
    [spec] = compose.compose_services(doc, tmp_path, {"FROM_HOST": "h"})
    assert spec.name == "default"
    assert spec.image == ImageSource("registry", ref="python:3.12-bookworm")
    assert spec.entrypoint == ["tail", "-f", "/dev/null"]
    assert spec.env == {"A": "1", "FROM_HOST": "h"}
    assert (spec.workdir, spec.block_network, spec.memory_mib, spec.cpu) == (
        "/work", True, 1024, 1.5)
    assert not spec.poolable and compose.ignored_keys([spec]) == []


def test_build_contexts_are_relative_to_the_compose_file(tmp_path: Path) -> None:
    doc = {"services": {"default": {"build": {"context": "env", "dockerfile": "Alt.Dockerfile"},
                                    "environment": {"K": "v", "FLAG": True, "H": None},
                                    "ports": ["8080:80"], "volumes": ["./x:/x"]}}}
    [spec] = compose.compose_services(doc, tmp_path, {})
    assert spec.image == ImageSource("dockerfile",
                                     dockerfile=str(tmp_path / "env" / "Alt.Dockerfile"),
                                     context=str(tmp_path / "env"))
    assert spec.env == {"K": "v", "FLAG": "true"}
    assert spec.entrypoint is None and spec.poolable
    assert compose.ignored_keys([spec]) == ["default.ports", "default.volumes"]
    [short] = compose.compose_services({"services": {"x": {"build": "."}}}, tmp_path, {})
    assert short.image.dockerfile == str(tmp_path / "Dockerfile")


def test_entrypoint_and_command_are_one_argv(tmp_path: Path) -> None:
    doc = {"services": {"default": {"image": "x", "entrypoint": ["sh", "-c"],
                                    "command": ["sleep infinity"]}}}
    [spec] = compose.compose_services(doc, tmp_path, {})
    assert spec.entrypoint == ["sh", "-c", "sleep infinity"]


def test_services_sharing_a_network_are_found_by_name(tmp_path: Path) -> None:
    doc = {"services": {
        "default": {"image": "a"},
        "web": {"image": "b", "hostname": "www", "container_name": "web-1",
                "networks": {"default": {"aliases": ["site.internal", "www"]}}}}}
    default, web = compose.compose_services(doc, tmp_path, {})
    assert default.network == web.network == "default"
    assert default.aliases == ("default",)
    assert web.aliases == ("web", "www", "web-1", "site.internal")
    assert not default.block_network and not web.block_network  # docker's: outbound too
    assert not default.poolable and compose.ignored_keys([default, web]) == []


def test_internal_networks_and_network_mode_none(tmp_path: Path) -> None:
    doc = {"networks": {"inner": {"internal": True}, "outer": None},
           "services": {
               "default": {"image": "a", "networks": ["inner"]},
               "victim": {"image": "b", "networks": ["inner"]},
               "proxy": {"image": "c", "networks": ["inner", "outer"]},
               "alone": {"image": "d", "network_mode": "none"},
               "open": {"image": "e", "network_mode": "bridge"}}}
    specs = {s.name: s for s in compose.compose_services(doc, tmp_path, {})}
    # an internal network: its members reach each other and nothing else...
    assert specs["default"].block_network and specs["victim"].block_network
    # ...unless they are on another network too (the proxy reaches out through "outer")
    assert not specs["proxy"].block_network
    assert {specs[n].network for n in ("default", "victim", "proxy")} == {"inner"}
    # network_mode: none is loopback only, as in Docker: no network, no peers
    assert specs["alone"].block_network and specs["alone"].network is None
    assert specs["alone"].aliases == ()
    assert not specs["open"].block_network and specs["open"].network is None


def test_networks_without_a_shared_service_stay_apart(tmp_path: Path) -> None:
    doc = {"networks": {"a": {}, "b": {}, "c": {"internal": True}},
           "services": {"default": {"image": "x", "networks": ["a"]},
                        "one": {"image": "x", "networks": ["a"]},
                        "two": {"image": "x", "networks": ["b"]},
                        "three": {"image": "x", "networks": ["b"]},
                        "solo": {"image": "x", "networks": ["c"]}}}
    specs = {s.name: s for s in compose.compose_services(doc, tmp_path, {})}
    assert specs["default"].network == specs["one"].network == "a"
    assert specs["two"].network == specs["three"].network == "b"
    # the only service of its network needs none (and a warm pool can serve it)
    assert specs["solo"].network is None and specs["solo"].block_network
    assert specs["solo"].poolable
    # a service on two networks joins them into one (a sandbox is on one network)
    doc["services"]["bridge"] = {"image": "x", "networks": ["b", "a"]}  # type: ignore[index]
    specs = {s.name: s for s in compose.compose_services(doc, tmp_path, {})}
    assert {specs[n].network for n in ("default", "one", "two", "three", "bridge")} == {"a"}


def test_a_single_service_and_the_defaults_need_no_network(tmp_path: Path) -> None:
    [spec] = compose.compose_services({"services": {"default": {"image": "a"}}}, tmp_path, {})
    assert spec.network is None and spec.aliases == () and not spec.block_network
    # inspect's own compose files for no configuration and a Dockerfile: network_mode none
    [spec] = compose.default_services()
    assert spec.block_network and spec.poolable


def test_depends_on_and_healthchecks(tmp_path: Path) -> None:
    doc = {"services": {
        "default": {"image": "a", "depends_on": {
            "db": {"condition": "service_healthy"},
            "setup": {"condition": "service_completed_successfully"},
            "optional": {"required": False}}},
        "db": {"image": "b", "healthcheck": {
            "test": ["CMD-SHELL", "pg_isready -q"], "interval": "200ms", "timeout": "5s",
            "retries": 5, "start_period": "1m30s"}},
        "setup": {"image": "c", "command": "true", "depends_on": ["db"]},
        "web": {"image": "d", "healthcheck": {"test": ["CMD", "curl", "-f", "http://x/"]}},
        "off": {"image": "e", "healthcheck": {"test": ["NONE"]}},
        "disabled": {"image": "e", "healthcheck": {"disable": True, "test": "true"}}}}
    specs = {s.name: s for s in compose.compose_services(doc, tmp_path, {})}
    assert specs["default"].depends_on == (("db", compose.HEALTHY),
                                           ("setup", compose.COMPLETED))
    assert specs["setup"].depends_on == (("db", compose.STARTED),)
    db = specs["db"].healthcheck
    assert db is not None and db.argv == ("/bin/sh", "-c", "pg_isready -q")
    # inspect's estimate: start_period + timeout + retries * (interval + timeout)
    assert db.interval_ms == 200 and db.wait_s == compose.STARTUP_ALLOWANCE + 121
    web = specs["web"].healthcheck
    assert web is not None and web.argv == ("curl", "-f", "http://x/")
    assert web.interval_ms == compose.PROBE_EVERY_MS  # (Docker's 30 s, until it passes)
    assert web.wait_s == compose.STARTUP_ALLOWANCE + 180
    assert specs["off"].healthcheck is None and specs["disabled"].healthcheck is None
    assert not specs["web"].poolable


def test_bad_dependencies_are_refused(tmp_path: Path) -> None:
    def services(**found: object) -> dict[str, object]:
        return {"services": {"default": {"image": "a"}, **found}}

    with pytest.raises(ComposeError, match="depends on 'nothing'"):
        compose.compose_services(services(b={"image": "b", "depends_on": ["nothing"]}),
                                 tmp_path, {})
    with pytest.raises(ComposeError, match="cycle: b -> c -> b"):
        compose.compose_services(services(b={"image": "b", "depends_on": ["c"]},
                                          c={"image": "c", "depends_on": ["b"]}), tmp_path, {})
    with pytest.raises(ComposeError, match="no healthcheck"):
        compose.compose_services(services(b={"image": "b", "depends_on": {
            "default": {"condition": "service_healthy"}}}), tmp_path, {})
    with pytest.raises(ComposeError, match="unknown depends_on condition"):
        compose.compose_services(services(b={"image": "b", "depends_on": {
            "default": {"condition": "service_ready"}}}), tmp_path, {})
    with pytest.raises(ComposeError, match="healthcheck 'test'"):
        compose.compose_services(services(b={"image": "b", "healthcheck": {
            "test": ["RUN", "x"]}}), tmp_path, {})


def test_bad_networks_are_refused(tmp_path: Path) -> None:
    def services(doc: dict[str, object] | None = None, **found: object) -> dict[str, object]:
        return {**(doc or {}), "services": {"default": {"image": "a"}, **found}}

    with pytest.raises(ComposeError, match="does not define"):
        compose.compose_services(services(b={"image": "b", "networks": ["back"]}),
                                 tmp_path, {})
    with pytest.raises(ComposeError, match="external"):
        compose.compose_services(services({"networks": {"ext": {"external": True}}}),
                                 tmp_path, {})
    with pytest.raises(ComposeError, match="both 'network_mode' and 'networks'"):
        compose.compose_services(services(b={"image": "b", "network_mode": "none",
                                             "networks": ["default"]}), tmp_path, {})
    with pytest.raises(ComposeError, match="not a host name"):
        compose.compose_services(services(b={"image": "b", "networks": {
            "default": {"aliases": ["bad name"]}}}), tmp_path, {})
    with pytest.raises(ComposeError, match="16 at most"):
        compose.compose_services(services(b={"image": "b", "networks": {
            "default": {"aliases": [f"n{i}" for i in range(16)]}}}), tmp_path, {})
    with pytest.raises(ComposeError, match="network_mode 'service:b'"):
        compose.compose_services(services(c={"image": "c", "network_mode": "service:b"}),
                                 tmp_path, {})


def test_durations() -> None:
    assert [compose.duration_s(v, "0s") for v in ("1m30s", "500ms", "1.5h", 2, None)] == [
        90.0, 0.5, 5400.0, 2.0, 0.0]
    assert compose.duration_s(None, "30s") == 30.0
    with pytest.raises(ComposeError):
        compose.duration_s("soon", "0s")


def test_what_hutch_cannot_do_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match="network_mode 'host'"):
        compose.compose_services({"services": {"d": {"image": "a", "network_mode": "host"}}},
                                 tmp_path, {})
    with pytest.raises(ComposeError, match="neither 'image' nor 'build'"):
        compose.compose_services({"services": {"d": {}}}, tmp_path, {})
    with pytest.raises(ComposeError, match="'services'"):
        compose.compose_services({}, tmp_path, {})


def test_interpolation_of_sample_metadata() -> None:
    env = {"SAMPLE_METADATA_IMAGE": "alpine", "EMPTY": ""}
    assert compose.interpolate("image: ${SAMPLE_METADATA_IMAGE}", env) == "image: alpine"
    assert compose.interpolate("$SAMPLE_METADATA_IMAGE $$HOME", env) == "alpine $HOME"
    assert compose.interpolate("${EMPTY:-d} ${EMPTY-d} ${UNSET-d} ${UNSET}", env) == "d  d "
    with pytest.raises(ComposeError, match="UNSET is not set: needed"):
        compose.interpolate("${UNSET:?needed}", env)


def test_sizes_and_files(tmp_path: Path) -> None:
    assert [compose.size_mib(v) for v in ("512m", "2g", "1.5GiB", "2048k", 3 * 1024**2)] == [
        512, 2048, 1536, 2, 3]
    with pytest.raises(ComposeError):
        compose.size_mib("lots")
    assert compose.find_config(tmp_path) is None
    (tmp_path / "Dockerfile").write_text("FROM x\n")
    assert compose.find_config(tmp_path) == tmp_path / "Dockerfile"
    (tmp_path / "compose.yaml").write_text("services: {}\n")
    assert compose.find_config(tmp_path) == tmp_path / "compose.yaml"
    assert all(map(compose.is_dockerfile, ["Dockerfile", "a.Dockerfile", "Dockerfile.gpu"]))
    assert not compose.is_dockerfile("compose.yaml")
    [spec] = compose.dockerfile_services(tmp_path / "Dockerfile")
    assert spec.image.context == str(tmp_path) and spec.name == "default"
    assert spec.block_network
