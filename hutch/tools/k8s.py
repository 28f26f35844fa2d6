"""``hutch k8s render``: the manifests of kubernetes-sigs/agent-sandbox for what
``Sandbox.create`` and ``App.warm_pool`` declare, so that the same sandbox runs on a cluster.

agent-sandbox (SIG Apps, ``agents.x-k8s.io/v1beta1``) maps onto hutch almost one to one: a
``Sandbox`` is a create, a ``SandboxTemplate`` with a ``SandboxWarmPool`` is a warm pool,
a ``SandboxClaim`` takes a sandbox from one.  What each argument becomes:

=========================  ===============================================================
``image``                  the container's image, pinned by digest (a tag is resolved with
                           ``skopeo inspect``: a cluster must run what was tested)
``*args``, ``workdir``     ``command``, ``workingDir`` (no args: ``sleep infinity``, as a
                           hutch sandbox without a command idles until terminated)
``cpu``, ``memory``        ``resources`` requests, and limits for ``(request, limit)``
``gpu``                    an ``nvidia.com/gpu`` limit (``"A100:2"``: 2)
``env``, ``secrets``       ``env``; ``envFrom`` Kubernetes Secrets of the same names
                           (``Secret.from_name``: values never go in a manifest)
``timeout``                ``shutdownTime`` (now + timeout) with ``shutdownPolicy: Delete``
``idle_timeout``           the annotation ``hutch.dev/idle-timeout`` (agent-sandbox has no
                           idle shutdown: a controller of yours acts on it)
``block_network``,         a NetworkPolicy: the template's ``networkPolicy`` (its
``outbound_cidr_allowlist``  controller makes the policy), or, for a lone ``Sandbox``, a
                           ``networking.k8s.io/v1`` NetworkPolicy selecting its pod
``*_ports``                ``containerPort``\\ s and ``service: true``
``tags``                   labels
=========================  ===============================================================

The pod keeps hutch's defaults where Kubernetes can express them: its own user namespace
(``hostUsers: false``), the runtime's seccomp profile, podman's capability set and no
privilege escalation, no service-account token, and egress to the public Internet only
(agent-sandbox's own default, which blocks the cluster's and the cloud's private ranges).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import re
import shutil
import subprocess
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hutch.exception import InvalidError, NotFoundError
from hutch.sdk import options
from hutch.sdk.secret import Secret

API = "agents.x-k8s.io/v1beta1"
EXTENSIONS_API = "extensions.agents.x-k8s.io/v1beta1"
#: The label every rendered pod carries with its sandbox's (or pool's) name: what a lone
#: Sandbox's NetworkPolicy selects.
NAME_LABEL = "hutch.dev/name"
IDLE_ANNOTATION = "hutch.dev/idle-timeout"
CONTAINER = "sandbox"
#: podman's (and hutch's) capability set, without the ``CAP_`` Kubernetes leaves out.
CAPABILITIES = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "NET_BIND_SERVICE",
                "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"]
#: Who may connect in: agent-sandbox's router, as its controller's default policy allows.
ROUTER_PEER = {"namespaceSelector": {"matchLabels": {
    "kubernetes.io/metadata.name": "agent-sandbox-system"}},
    "podSelector": {"matchLabels": {"app": "sandbox-router"}}}
#: Egress with the network on and no allowlist: the public Internet (the controller's
#: default, written out for a lone Sandbox, which has no controller-made policy).
PUBLIC_INTERNET = [{"to": [
    {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "172.16.0.0/12",
                                                 "192.168.0.0/16", "169.254.0.0/16"]}},
    {"ipBlock": {"cidr": "::/0", "except": ["fc00::/7", "fe80::/10"]}}]}]

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]\Z")
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}\Z")


@dataclass
class Shape:
    """What a pod is made of: the arguments of ``Sandbox.create`` that Kubernetes takes."""

    image: str
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    workdir: str | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    gpu: str | None = None
    block_network: bool = False
    allowlist: list[str] | None = None
    ports: list[int] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)


def shape(*args: str, image: str, env: Mapping[str, str | None] | None = None,
          secrets: Collection[Secret | str] | None = None, workdir: str | None = None,
          cpu: float | tuple[float, float] | None = None,
          memory: int | tuple[int, int] | None = None, gpu: str | None = None,
          block_network: bool = False, outbound_cidr_allowlist: Sequence[str] | None = None,
          encrypted_ports: Sequence[int] = (), unencrypted_ports: Sequence[int] = (),
          tags: Mapping[str, str] | None = None, tls_verify: bool = True) -> Shape:
    """The arguments checked as ``Sandbox.create`` checks them (:class:`InvalidError`
    names the one refused), the image pinned by digest."""
    if block_network and outbound_cidr_allowlist is not None:
        raise InvalidError("`block_network` and `outbound_cidr_allowlist` cannot be combined")
    ports = sorted({*options.check_ports(list(encrypted_ports), "encrypted_ports"),
                    *options.check_ports(list(unencrypted_ports), "unencrypted_ports")})
    return Shape(
        image=pin_image(image, tls_verify=tls_verify),
        command=options.check_args(args, "the command"),
        env=options.env_without_none(env),
        secrets=_secret_names(secrets),
        workdir=options.check_workdir(workdir),
        resources=_resources(cpu, memory, gpu),
        gpu=gpu,
        block_network=bool(block_network),
        allowlist=None if outbound_cidr_allowlist is None else _cidrs(outbound_cidr_allowlist),
        ports=ports,
        labels=_labels(tags),
    )


def sandbox(spec: Shape, *, name: str, timeout: float = 300,
            idle_timeout: float | None = None, namespace: str | None = None,
            now: datetime.datetime | None = None) -> list[dict[str, Any]]:
    """A create: an agent-sandbox ``Sandbox`` and the NetworkPolicy of its pod."""
    _check_name(name, "sandbox")
    labels = {**spec.labels, NAME_LABEL: name}
    body: dict[str, Any] = {
        "podTemplate": _pod_template(spec, labels),
        **_shutdown(timeout, now),
    }
    if spec.ports:
        body["service"] = True
    policy = {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": _metadata(name, namespace, labels),
        "spec": {"podSelector": {"matchLabels": {NAME_LABEL: name}},
                 "policyTypes": ["Ingress", "Egress"],
                 **_network_rules(spec, lone=True)},
    }
    return [{"apiVersion": API, "kind": "Sandbox",
             "metadata": _metadata(name, namespace, labels, idle_timeout),
             "spec": body}, policy]


def warm_pool(spec: Shape, *, name: str, size: int, namespace: str | None = None,
              idle_timeout: float | None = None) -> list[dict[str, Any]]:
    """An app's warm pool: a ``SandboxTemplate`` and a ``SandboxWarmPool`` of ``size``."""
    _check_name(name, "warm pool")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= 2**31 - 1:
        raise InvalidError(f"a warm pool's size must be a whole number from 0, got {size!r}")
    labels = {**spec.labels, NAME_LABEL: name}
    template: dict[str, Any] = {"podTemplate": _pod_template(spec, labels),
                                "networkPolicyManagement": "Managed"}
    if spec.block_network or spec.allowlist is not None:
        template["networkPolicy"] = _network_rules(spec, lone=False)
    if spec.ports:
        template["service"] = True
    return [
        {"apiVersion": EXTENSIONS_API, "kind": "SandboxTemplate",
         "metadata": _metadata(name, namespace, labels, idle_timeout), "spec": template},
        {"apiVersion": EXTENSIONS_API, "kind": "SandboxWarmPool",
         "metadata": _metadata(name, namespace, labels),
         "spec": {"replicas": size, "sandboxTemplateRef": {"name": name}}},
    ]


def claim(*, pool: str, name: str, timeout: float = 300, namespace: str | None = None,
          tags: Mapping[str, str] | None = None,
          now: datetime.datetime | None = None) -> list[dict[str, Any]]:
    """A create that takes a sandbox of a warm pool: a ``SandboxClaim``.  Its env and
    secrets are the pool template's (a claim that sets env cold-starts a sandbox in
    agent-sandbox, which is what a warm pool is there to avoid)."""
    _check_name(name, "claim")
    _check_name(pool, "warm pool")
    labels = _labels(tags)
    shutdown = _shutdown(timeout, now)
    return [{"apiVersion": EXTENSIONS_API, "kind": "SandboxClaim",
             "metadata": _metadata(name, namespace, labels),
             "spec": {"warmPoolRef": {"name": pool},
                      "lifecycle": shutdown,
                      **({"additionalPodMetadata": {"labels": labels}} if labels else {})}}]


def default_name(spec: Shape) -> str:
    """A name from the shape's content: the same arguments render the same manifests."""
    digest = hashlib.sha256(json.dumps(spec.__dict__, sort_keys=True).encode()).hexdigest()
    return f"hutch-{digest[:10]}"


def pin_image(ref: str, *, tls_verify: bool = True) -> str:
    """``ref`` by digest: as given when it has one, else the registry's digest of the
    tag now (``skopeo inspect``), so every pod of a pool runs the same bytes."""
    if not isinstance(ref, str) or not ref or any(c.isspace() for c in ref):
        raise InvalidError(f"an image reference is a registry name, got {ref!r}")
    if "@" in ref:
        if not _DIGEST.search(ref):
            raise InvalidError(f"{ref!r}: a digest must be sha256: and 64 hex digits")
        return ref
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        raise NotFoundError("resolving an image tag to its digest needs skopeo "
                            "(apt-get install skopeo), or give the reference by digest")
    result = subprocess.run(
        [skopeo, "inspect", "--no-tags", f"--tls-verify={str(tls_verify).lower()}",
         "--format", "{{.Digest}}", f"docker://{ref}"],
        capture_output=True, text=True, timeout=120)
    digest = result.stdout.strip()
    if result.returncode != 0 or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise NotFoundError(f"cannot resolve {ref!r} to a digest: "
                            f"{result.stderr.strip()[-500:] or digest}")
    return f"{ref.rsplit(':', 1)[0] if _has_tag(ref) else ref}@{digest}"


def _has_tag(ref: str) -> bool:
    return ":" in ref.rsplit("/", 1)[-1]


def _secret_names(secrets: Collection[Secret | str] | None) -> list[str]:
    names = []
    for secret in secrets or ():
        name = secret if isinstance(secret, str) else secret.name \
            if isinstance(secret, Secret) else None
        if name is None:
            if isinstance(secret, Secret):
                raise InvalidError(
                    f"{secret!r} holds values given in code: a manifest references a "
                    "Kubernetes Secret by name instead (kubectl create secret generic NAME "
                    "..., then Secret.from_name(NAME))")
            raise InvalidError(f"secrets must be hutch.Secret objects or names, not "
                               f"{type(secret).__name__}")
        _check_name(name, "secret")
        names.append(name)
    return names


def _resources(cpu: object, memory: object, gpu: str | None) -> dict[str, Any]:
    fields = options.check_resources(cpu=cpu, memory=memory, ephemeral_disk=None,
                                     pids_limit=None)
    requests, limits = {}, {}
    if "cpu" in fields:
        requests["cpu"] = _quantity(fields["cpu"])
    if "cpu_limit" in fields:
        limits["cpu"] = _quantity(fields["cpu_limit"])
    if "memory" in fields:
        requests["memory"] = f"{int(fields['memory'])}Mi"
    if "memory_limit" in fields:
        limits["memory"] = f"{int(fields['memory_limit'])}Mi"
    if gpu is not None:
        limits["nvidia.com/gpu"] = str(_gpu_count(gpu))
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def _quantity(cores: float) -> str:
    """Cores as a Kubernetes quantity: whole cores, else millicores (at least 1m)."""
    return str(int(cores)) if cores == int(cores) else f"{max(1, round(cores * 1000))}m"


def _gpu_count(gpu: object) -> int:
    """Modal's ``gpu`` (``"T4"``, ``"A100:2"``, ``"any"``) as a count of GPUs."""
    if not isinstance(gpu, str) or not re.fullmatch(r"[A-Za-z0-9-]+(:[1-9][0-9]?)?", gpu):
        raise InvalidError(f"`gpu` is a GPU type with an optional count (\"A100:2\"), "
                           f"got {options.shown(gpu)}")
    return int(gpu.partition(":")[2] or 1)


def _cidrs(allowlist: Sequence[str]) -> list[str]:
    if isinstance(allowlist, str) or not all(isinstance(c, str) for c in allowlist):
        raise InvalidError("`outbound_cidr_allowlist` must be a list of CIDR strings")
    found = []
    for cidr in allowlist:
        try:
            found.append(str(ipaddress.ip_network(cidr, strict=False)))
        except ValueError as exc:
            raise InvalidError(f"`outbound_cidr_allowlist`: {options.shown(cidr)} is not a "
                               f"network: {exc}") from None
    return found


def _labels(tags: Mapping[str, str] | None) -> dict[str, str]:
    if tags is None:
        return {}
    options.check_tag_dict(tags)
    for key, value in tags.items():
        if not _LABEL_NAME.match(key) or (value and not _LABEL_NAME.match(value)):
            raise InvalidError(f"the tag {key!r}: {value!r} is not a Kubernetes label (they "
                               "begin and end with a letter or digit)")
    return dict(tags)


def _check_name(name: object, what: str) -> None:
    if not isinstance(name, str) or not _DNS_LABEL.match(name):
        raise InvalidError(f"a {what}'s name in Kubernetes is a DNS label (lowercase letters, "
                           f"digits and '-', at most 63), got {options.shown(name)}")


def _metadata(name: str, namespace: str | None, labels: Mapping[str, str],
              idle_timeout: float | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        _check_name(namespace, "namespace")
        meta["namespace"] = namespace
    meta["labels"] = dict(labels)
    if idle_timeout is not None:
        seconds = options.check_timeout(idle_timeout, "`idle_timeout`", optional=False)
        meta["annotations"] = {IDLE_ANNOTATION: f"{seconds:g}s"}
    return meta


def _shutdown(timeout: float, now: datetime.datetime | None) -> dict[str, Any]:
    seconds = options.check_timeout(timeout, "`timeout`", optional=False)
    assert seconds is not None
    start = now or datetime.datetime.now(datetime.UTC)
    end = (start + datetime.timedelta(seconds=seconds)).astimezone(datetime.UTC)
    return {"shutdownPolicy": "Delete",
            "shutdownTime": end.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")}


def _network_rules(spec: Shape, *, lone: bool) -> dict[str, Any]:
    """Ingress from agent-sandbox's router only; egress: none (``block_network``), the
    allowlist's networks, or (a lone Sandbox's default) the public Internet."""
    rules: dict[str, Any] = {"ingress": [{"from": [ROUTER_PEER]}]}
    if spec.allowlist is not None:
        rules["egress"] = [{"to": [{"ipBlock": {"cidr": c}} for c in spec.allowlist]}] \
            if spec.allowlist else []
    elif not spec.block_network and lone:
        rules["egress"] = PUBLIC_INTERNET
    return rules


def _pod_template(spec: Shape, labels: Mapping[str, str]) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image,
        "command": spec.command or ["sleep", "infinity"],
        "securityContext": {"allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"], "add": CAPABILITIES}},
    }
    if spec.workdir:
        container["workingDir"] = spec.workdir
    if spec.env:
        container["env"] = [{"name": k, "value": v} for k, v in spec.env.items()]
    if spec.secrets:
        container["envFrom"] = [{"secretRef": {"name": n}} for n in spec.secrets]
    if spec.resources:
        container["resources"] = spec.resources
    if spec.ports:
        container["ports"] = [{"containerPort": p, "protocol": "TCP"} for p in spec.ports]
    return {"metadata": {"labels": dict(labels)}, "spec": {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostUsers": False,
        "restartPolicy": "Never",
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
    }}
