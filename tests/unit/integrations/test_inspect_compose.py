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


def test_several_services_are_refused_without_a_network_between_them(tmp_path: Path) -> None:
    doc: dict[str, object] = {"services": {"default": {"image": "a"}, "victim": {"image": "b"}}}
    with pytest.raises(ComposeError, match="reach each other by name"):
        compose.compose_services(doc, tmp_path, {})
    doc[compose.SEPARATE_NETWORKS] = True
    assert [s.name for s in compose.compose_services(doc, tmp_path, {})] == [
        "default", "victim"]


def test_the_default_service_comes_first(tmp_path: Path) -> None:
    doc = {compose.SEPARATE_NETWORKS: True,
           "services": {"db": {"image": "a"}, "agent": {"image": "b", "x-default": True}}}
    assert [s.name for s in compose.compose_services(doc, tmp_path, {})] == ["agent", "db"]
    del doc["services"]["agent"]["x-default"]  # type: ignore[index]
    with pytest.raises(ComposeError, match="x-default"):
        compose.compose_services(doc, tmp_path, {})
    only = {"services": {"solo": {"image": "a"}}}
    assert compose.compose_services(only, tmp_path, {})[0].name == "solo"


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
