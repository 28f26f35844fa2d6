"""``hutch k8s render``: every manifest validates against agent-sandbox's own CRDs
(``tests/data/agent-sandbox-crds``, copied unchanged from kubernetes-sigs/agent-sandbox),
for every combination of the options it maps, and declares no field the schema lacks
(the API server would drop such a field without a word)."""

from __future__ import annotations

import datetime
import itertools
import json
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from jsonschema import Draft4Validator

from hutch.exception import InvalidError, NotFoundError
from hutch.sdk.secret import Secret
from hutch.tools import k8s, k8scli

CRDS = Path(__file__).resolve().parents[2] / "data" / "agent-sandbox-crds"
DIGEST = "sha256:" + "ab" * 32
IMAGE = f"registry.example/team/python@{DIGEST}"
NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
FILES = {"Sandbox": "agents.x-k8s.io_sandboxes.yaml",
         "SandboxTemplate": "extensions.agents.x-k8s.io_sandboxtemplates.yaml",
         "SandboxWarmPool": "extensions.agents.x-k8s.io_sandboxwarmpools.yaml",
         "SandboxClaim": "extensions.agents.x-k8s.io_sandboxclaims.yaml"}


@cache
def _schema(kind: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / FILES[kind]).read_text())
    assert crd["spec"]["names"]["kind"] == kind
    group = crd["spec"]["group"]
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
    assert version["served"] and version["storage"], f"{kind} v1beta1 is not served"
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    schema["properties"]["apiVersion"]["enum"] = [f"{group}/v1beta1"]
    schema["properties"]["kind"]["enum"] = [kind]
    return schema


def _undeclared(value: Any, schema: dict[str, Any], where: str = "") -> list[str]:
    """Fields of ``value`` that ``schema`` does not declare (a structural schema prunes
    them on the API server)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found = []
    if isinstance(value, dict):
        declared = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if declared is not None and key in declared:
                found += _undeclared(item, declared[key], f"{where}.{key}")
            elif isinstance(extra, dict):
                found += _undeclared(item, extra, f"{where}.{key}")
            elif declared is not None:  # (an object without properties is free-form)
                found.append(f"{where}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for n, item in enumerate(value):
            found += _undeclared(item, schema["items"], f"{where}[{n}]")
    return found


def check(doc: dict[str, Any]) -> None:
    """``doc`` against its CRD's schema; a NetworkPolicy's rules against the same
    ``networking.k8s.io/v1`` rule schemas the SandboxTemplate embeds."""
    if doc["kind"] == "NetworkPolicy":
        assert doc["apiVersion"] == "networking.k8s.io/v1"
        rules = _schema("SandboxTemplate")["properties"]["spec"]["properties"]["networkPolicy"]
        spec = doc["spec"]
        assert set(spec) <= {"podSelector", "policyTypes", "ingress", "egress"}
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        assert spec["podSelector"]["matchLabels"] == {k8s.NAME_LABEL: doc["metadata"]["name"]}
        body = {k: v for k, v in spec.items() if k in ("ingress", "egress")}
        Draft4Validator(rules).validate(body)
        assert not _undeclared(body, rules)
        return
    schema = _schema(doc["kind"])
    errors = sorted(Draft4Validator(schema).iter_errors(doc), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
    assert not _undeclared(doc, schema), _undeclared(doc, schema)


NETWORKS: dict[str, dict[str, Any]] = {
    "default": {}, "blocked": {"block_network": True},
    "allowlist": {"outbound_cidr_allowlist": ["10.1.0.0/16", "2001:db8::1/64"]},
    "nothing-allowed": {"outbound_cidr_allowlist": []},
}
RESOURCES: dict[str, dict[str, Any]] = {
    "none": {}, "requests": {"cpu": 0.25, "memory": 512},
    "limits": {"cpu": (0.5, 2.0), "memory": (256, 1024), "gpu": "A100:2"},
}


def _combinations(network: str) -> list[dict[str, Any]]:
    found = []
    for resources, env, secrets, tags, ports, workdir in itertools.product(
            RESOURCES, (False, True), (False, True), (False, True), (False, True),
            (False, True)):
        found.append({**NETWORKS[network], **RESOURCES[resources],
                      **({"env": {"A": "1", "EMPTY": "", "NONE": None}} if env else {}),
                      **({"secrets": [Secret.from_name("db-creds"), "api-key"]}
                         if secrets else {}),
                      **({"tags": {"team": "ml", "run": "r-1.2_x"}} if tags else {}),
                      **({"unencrypted_ports": [8080], "encrypted_ports": [443]}
                         if ports else {}),
                      **({"workdir": "/work"} if workdir else {})})
    return found


@pytest.mark.parametrize("network", list(NETWORKS))
def test_every_combination_validates_against_the_crds(network: str) -> None:
    combos = _combinations(network)
    assert len(combos) == len(RESOURCES) * 2**5
    for n, options in enumerate(combos):
        args = ("python3", "-c", "print(1)") if n % 2 else ()
        spec = k8s.shape(*args, image=IMAGE, **options)
        idle = 60 if n % 3 else None
        docs = [*k8s.sandbox(spec, name="sb-one", timeout=600, idle_timeout=idle, now=NOW,
                             namespace="agents" if n % 4 else None),
                *k8s.warm_pool(spec, name="pool-one", size=n % 5, idle_timeout=idle),
                *k8s.claim(pool="pool-one", name="claim-one", timeout=30,
                           tags=options.get("tags"), now=NOW)]
        assert [d["kind"] for d in docs] == ["Sandbox", "NetworkPolicy", "SandboxTemplate",
                                            "SandboxWarmPool", "SandboxClaim"]
        for doc in docs:
            check(doc)


def test_the_schema_check_can_fail() -> None:
    spec = k8s.shape(image=IMAGE)
    lone = k8s.sandbox(spec, name="x", now=NOW)[0]
    lone["spec"]["podTemplate"]["spec"]["containers"][0]["imagePullSecret"] = "typo"
    with pytest.raises(AssertionError, match="imagePullSecret"):
        check(lone)
    pool = k8s.warm_pool(spec, name="x", size=1)[1]
    pool["spec"]["replicas"] = -1
    with pytest.raises(AssertionError, match="replicas"):
        check(pool)


def test_what_each_option_becomes() -> None:
    spec = k8s.shape("python3", "app.py", image=IMAGE, env={"A": "1", "B": None},
                     secrets=[Secret.from_name("db")], workdir="/srv", cpu=(0.5, 2.0),
                     memory=(256, 1024), gpu="H100:4", block_network=True,
                     unencrypted_ports=[8000], tags={"team": "ml"})
    box, policy = k8s.sandbox(spec, name="web", timeout=90, idle_timeout=30, now=NOW)
    pod = box["spec"]["podTemplate"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == IMAGE
    assert container["command"] == ["python3", "app.py"]
    assert container["workingDir"] == "/srv"
    assert container["env"] == [{"name": "A", "value": "1"}]
    assert container["envFrom"] == [{"secretRef": {"name": "db"}}]
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "256Mi"},
                                      "limits": {"cpu": "2", "memory": "1024Mi",
                                                 "nvidia.com/gpu": "4"}}
    assert container["ports"] == [{"containerPort": 8000, "protocol": "TCP"}]
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["hostUsers"] is False and pod["automountServiceAccountToken"] is False
    assert box["spec"]["shutdownTime"] == "2026-12-01T12:01:30Z"
    assert box["spec"]["shutdownPolicy"] == "Delete" and box["spec"]["service"] is True
    assert box["metadata"]["annotations"] == {k8s.IDLE_ANNOTATION: "30s"}
    assert box["metadata"]["labels"] == {"team": "ml", k8s.NAME_LABEL: "web"}
    assert "egress" not in policy["spec"]  # no egress rule: all egress refused
    assert policy["spec"]["ingress"] == [{"from": [k8s.ROUTER_PEER]}]


def test_network_choices() -> None:
    default = k8s.shape(image=IMAGE)
    allow = k8s.shape(image=IMAGE, outbound_cidr_allowlist=["10.1.2.3/16"])
    assert k8s.sandbox(default, name="a")[1]["spec"]["egress"] == k8s.PUBLIC_INTERNET
    assert k8s.warm_pool(default, name="a", size=1)[0]["spec"]["networkPolicy"][
        "egress"] == k8s.PUBLIC_INTERNET
    template = k8s.warm_pool(allow, name="a", size=1)[0]["spec"]
    assert template["networkPolicy"]["egress"] == [{"to": [{"ipBlock": {
        "cidr": "10.1.0.0/16"}}]}]
    blocked = k8s.warm_pool(k8s.shape(image=IMAGE, block_network=True), name="a", size=1)
    assert blocked[0]["spec"]["networkPolicy"] == {"ingress": [{"from": [k8s.ROUTER_PEER]}]}


@pytest.mark.parametrize(("options", "message"), [
    ({"secrets": [Secret.from_dict({"K": "v"})]}, "values given in code"),
    ({"tags": {"-bad": "x"}}, "not a Kubernetes label"),
    ({"outbound_cidr_allowlist": ["10.0.0.0/33"]}, "not a network"),
    ({"block_network": True, "outbound_cidr_allowlist": []}, "cannot be combined"),
    ({"cpu": (2.0, 1.0)}, "lower than request"),
    ({"gpu": "A100:x"}, "GPU type"),
    ({"gpu": "banana"}, "GPU type"),
    ({"env": {"1A": "x"}}, "not a valid environment variable"),
    ({"workdir": "relative"}, "workdir"),
])
def test_bad_options_are_refused_by_name(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidError, match=message):
        k8s.shape(image=IMAGE, **options)


@pytest.mark.parametrize("name", ["Upper", "a_b", "x" * 64, "", "-a"])
def test_names_must_be_dns_labels(name: str) -> None:
    with pytest.raises(InvalidError, match="DNS label"):
        k8s.sandbox(k8s.shape(image=IMAGE), name=name)


def test_a_digest_must_be_whole() -> None:
    with pytest.raises(InvalidError, match="64 hex"):
        k8s.pin_image("python@sha256:abc")
    assert k8s.pin_image(IMAGE) == IMAGE


def test_an_unreachable_registry_is_a_clear_error() -> None:
    with pytest.raises(NotFoundError, match="cannot resolve 'localhost:1/x:1' to a digest"):
        k8s.pin_image("localhost:1/x:1", tls_verify=False)


def test_default_names_follow_the_content() -> None:
    one, two = k8s.shape(image=IMAGE), k8s.shape(image=IMAGE, cpu=1.0)
    assert k8s.default_name(one) == k8s.default_name(k8s.shape(image=IMAGE))
    assert k8s.default_name(one) != k8s.default_name(two)


@pytest.mark.parametrize("kind", ["sandbox", "pool", "claim"])
def test_the_cli_writes_yaml_that_reads_back_the_same(kind: str) -> None:
    extra = {"sandbox": ["--image", IMAGE, "--cpu", "0.5,2", "--memory", "512", "-e",
                         "YES=no", "-e", "N=0777", "--tag", "on=off", "--allow-cidr",
                         "10.0.0.0/8", "--idle-timeout", "30", "--", "echo", "1e3"],
             "pool": ["--image", IMAGE, "--size", "3", "--block-network", "--secret", "s"],
             "claim": ["--pool", "pool-a", "--tag", "team=ml"]}[kind]
    argv = [sys.executable, "-m", "hutch", "k8s", "render", kind, "--name", "n1"]
    text = subprocess.run([*argv, *extra], capture_output=True, text=True,
                          check=True).stdout
    docs = list(yaml.safe_load_all(text))
    as_json = json.loads(subprocess.run([*argv, "-o", "json", *extra], capture_output=True,
                                        text=True, check=True).stdout)["items"]
    for doc in as_json:  # (shutdownTime is "now" at each run)
        doc.get("spec", {}).pop("shutdownTime", None)
        doc.get("spec", {}).get("lifecycle", {}).pop("shutdownTime", None)
    for doc in docs:
        doc.get("spec", {}).pop("shutdownTime", None)
        doc.get("spec", {}).get("lifecycle", {}).pop("shutdownTime", None)
        check(doc)
    assert docs == as_json
    if kind == "sandbox":
        container = docs[0]["spec"]["podTemplate"]["spec"]["containers"][0]
        assert container["env"] == [{"name": "YES", "value": "no"},
                                    {"name": "N", "value": "0777"}]
        assert container["command"] == ["echo", "1e3"] and docs[0]["metadata"]["labels"][
            "on"] == "off"


@pytest.mark.parametrize("value", [{"a": [{"b": [[1, "x"], {}]}, []], "no": None},
                                   [{"k": {"m": "line\nbreak"}}, "é", 1.5, True]])
def test_the_yaml_emitter_round_trips(value: Any) -> None:
    assert yaml.safe_load(k8scli.to_yaml(value)) == value


def test_the_default_egress_is_hutchs_own() -> None:
    """A sandbox on a cluster refuses what a local one refuses (and IPv6 altogether)."""
    from hutch.engine.network import outbound

    assert k8s.BLOCKED_V4 == outbound.BLOCKED_V4
    assert [peer["ipBlock"]["cidr"] for peer in k8s.PUBLIC_INTERNET[0]["to"]] == ["0.0.0.0/0"]


def test_a_claim_without_tags_has_no_labels() -> None:
    assert "labels" not in k8s.claim(pool="p", name="c", now=NOW)[0]["metadata"]


@pytest.mark.parametrize(("ref", "loopback"), [
    ("localhost:5000/a:1", True), ("127.0.0.1:5000/team/a:1", True), ("[::1]:5000/a", True),
    ("registry.example/a:1", False), ("localhost/a:1", True), ("a:1", False),
    ("docker.io/library/python:3", False),
])
def test_loopback_registries_are_plain_http(ref: str, loopback: bool) -> None:
    assert k8s._loopback_registry(ref) is loopback


def test_a_gpu_count() -> None:
    spec = k8s.shape(image=IMAGE, gpu="any")
    assert spec.resources["limits"] == {"nvidia.com/gpu": "1"}
