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
``gpu``                    an ``nvidia.com/gpu`` limit (``"A100:2"``: 2; the type is the
                           cluster's node labels' to choose, not rendered)
``env``, ``secrets``       ``env``; ``envFrom`` Kubernetes Secrets of the same names
                           (``Secret.from_name``: values never go in a manifest)
``timeout``                ``shutdownTime`` (now + timeout) with ``shutdownPolicy: Delete``
``idle_timeout``           the annotation ``hutch.dev/idle-timeout`` (agent-sandbox has no
                           idle shutdown: a controller of yours acts on it)
network options            a NetworkPolicy: the template's ``networkPolicy`` (its
                           controller makes the policy), or, for a lone ``Sandbox``, a
                           ``networking.k8s.io/v1`` NetworkPolicy selecting its pod; by
                           default hutch's own egress rules (:data:`BLOCKED_V4`, no IPv6)
``*_ports``                ``containerPort``\\ s and ``service: true``
``tags``                   labels
=========================  ===============================================================

The pod keeps hutch's defaults where Kubernetes can express them: its own user namespace
(``hostUsers: false``), the runtime's seccomp profile, podman's capability set and no
privilege escalation, no service-account token, and egress to the public Internet only,
as hutch's firewall allows it (stricter than agent-sandbox's own default).
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
#: Egress with the network on and no allowlist: hutch's own default
#: (``hutch.engine.network.outbound.BLOCKED_V4``: private, shared, loopback, link-local,
#: benchmarking, multicast and reserved ranges refused) and no IPv6, as a local sandbox
#: has; stricter than agent-sandbox's default (which lets 100.64/10 and IPv6 through).
BLOCKED_V4 = ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
              "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15",
              "224.0.0.0/4", "240.0.0.0/4"]
PUBLIC_INTERNET = [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": BLOCKED_V4}}]}]

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
          tags: Mapping[str, str] | None = None, tls_verify: bool | None = None) -> Shape:
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
                 **_network_rules(spec)},
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
                                "networkPolicyManagement": "Managed",
                                "networkPolicy": _network_rules(spec)}
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
    metadata = _metadata(name, namespace, labels)
    if not labels:
        del metadata["labels"]
    return [{"apiVersion": EXTENSIONS_API, "kind": "SandboxClaim",
             "metadata": metadata,
             "spec": {"warmPoolRef": {"name": pool},
                      "lifecycle": shutdown,
                      **({"additionalPodMetadata": {"labels": labels}} if labels else {})}}]


def default_name(spec: Shape) -> str:
    """A name from the shape's content: the same arguments render the same manifests."""
    digest = hashlib.sha256(json.dumps(spec.__dict__, sort_keys=True).encode()).hexdigest()
    return f"hutch-{digest[:10]}"


def pin_image(ref: str, *, tls_verify: bool | None = None) -> str:
    """``ref`` by digest: as given when it has one, else the registry's digest of the
    tag now (``skopeo inspect``), so every pod of a pool runs the same bytes.
    ``tls_verify`` None: verified, except for a registry on localhost, 127.0.0.1 or
    [::1], reached over plain HTTP as ``hutch image push`` reaches it."""
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
    if tls_verify is None:
        tls_verify = not _loopback_registry(ref)
    result = subprocess.run(
        [skopeo, "inspect", "--no-tags", f"--tls-verify={str(tls_verify).lower()}",
         "--format", "{{.Digest}}", f"docker://{ref}"],
        capture_output=True, text=True, timeout=120)
    digest = result.stdout.strip()
    if result.returncode != 0 or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise NotFoundError(f"cannot resolve {ref!r} to a digest: "
                            f"{result.stderr.strip()[-500:] or digest}")
    return f"{ref.rsplit(':', 1)[0] if _has_tag(ref) else ref}@{digest}"


def _loopback_registry(ref: str) -> bool:
    first = ref.split("/", 1)[0] if "/" in ref else ""
    host = first.rsplit(":", 1)[0] if not first.startswith("[") else first.split("]")[0] + "]"
    return host in ("localhost", "127.0.0.1", "[::1]")


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


#: Modal's GPU types (``gpu=``); the type itself is not rendered: which nodes carry it is
#: the cluster's labelling (a ``nodeSelector`` of yours), the count is the limit.
GPU_TYPES = {"any", "t4", "l4", "a10g", "a10", "a100", "a100-40gb", "a100-80gb", "l40s",
             "h100", "h100!", "h200", "b200"}


def _gpu_count(gpu: object) -> int:
    """Modal's ``gpu`` (``"T4"``, ``"A100:2"``, ``"any"``) as a count of GPUs."""
    match = re.fullmatch(r"([A-Za-z0-9!-]+)(?::([1-9][0-9]?))?", gpu) \
        if isinstance(gpu, str) else None
    if match is None or match.group(1).lower() not in GPU_TYPES:
        raise InvalidError(f"`gpu` is a GPU type ({', '.join(sorted(GPU_TYPES))}) with an "
                           f"optional count (\"A100:2\"), got {options.shown(gpu)}")
    return int(match.group(2) or 1)


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


def _network_rules(spec: Shape) -> dict[str, Any]:
    """Ingress from agent-sandbox's router only; egress: none (``block_network``), the
    allowlist's networks, or the public Internet as hutch's firewall allows it.  (No
    ``egress`` key is no rule: everything out refused.)"""
    rules: dict[str, Any] = {"ingress": [{"from": [ROUTER_PEER]}]}
    if spec.allowlist:
        rules["egress"] = [{"to": [{"ipBlock": {"cidr": c}} for c in spec.allowlist]}]
    elif spec.allowlist is None and not spec.block_network:
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
