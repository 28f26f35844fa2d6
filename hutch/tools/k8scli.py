"""``hutch k8s render sandbox|pool|claim``: agent-sandbox manifests on standard output, for
``kubectl apply -f -`` (:mod:`hutch.tools.k8s` says what each option becomes).

The options are ``hutch run``'s and ``Sandbox.create``'s, by the same names: ``--cpu 0.5``
or ``--cpu 0.5,2`` (request, limit), ``--memory 512`` or ``--memory 512,1024`` (MiB),
``-e KEY=VALUE``, ``--secret NAME`` (a Kubernetes Secret), ``--timeout``,
``--idle-timeout``, ``--block-network``, ``--allow-cidr CIDR`` (each one), ``--tag K=V``.
Written as YAML by a small emitter of our own: PyYAML is not a dependency, and every
string is written double-quoted (JSON's escapes are YAML's), so no value can change type
on the way (``"no"``, ``"1e3"``, ``"0777"`` stay strings).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from hutch.tools import k8s


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = sub.add_parser("k8s", help="render agent-sandbox manifests for Kubernetes")
    kinds = top.add_subparsers(dest="k8s_action", required=True)
    render = kinds.add_parser("render", help="manifests of a sandbox, a warm pool or a claim")
    what = render.add_subparsers(dest="k8s_kind", required=True)
    lone = what.add_parser("sandbox", help="a Sandbox and its NetworkPolicy (a create)")
    _shape_options(lone)
    _common(lone)
    lone.add_argument("--timeout", type=float, default=300, metavar="S")
    lone.add_argument("cmd", nargs=argparse.REMAINDER, help="the command (after --)")
    pool = what.add_parser("pool", help="a SandboxTemplate and a SandboxWarmPool")
    _shape_options(pool)
    _common(pool)
    pool.add_argument("--size", type=int, required=True, help="sandboxes kept ready")
    pool.add_argument("cmd", nargs=argparse.REMAINDER, help="the command (after --)")
    taken = what.add_parser("claim", help="a SandboxClaim on a warm pool (a create from it)")
    _common(taken)
    taken.add_argument("--pool", required=True, help="the warm pool's name")
    taken.add_argument("--timeout", type=float, default=300, metavar="S")
    taken.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    render.set_defaults(func=cmd_render)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="the object's name (default: from its content)")
    p.add_argument("-n", "--namespace", help="the namespace (default: kubectl's)")
    p.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")


def _shape_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", required=True,
                   help="registry reference, by digest or by a tag resolved to its digest")
    p.add_argument("--tls-verify", choices=["true", "false"], default=None,
                   help="verify the registry's certificate when resolving a tag (default: "
                        "yes, except for a registry on localhost, reached over HTTP)")
    p.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--secret", action="append", default=[], metavar="NAME",
                   help="a Kubernetes Secret whose keys become variables")
    p.add_argument("-w", "--workdir")
    p.add_argument("--cpu", metavar="CORES[,LIMIT]")
    p.add_argument("--memory", metavar="MIB[,LIMIT]")
    p.add_argument("--gpu", metavar="TYPE[:COUNT]")
    p.add_argument("--block-network", action="store_true")
    p.add_argument("--allow-cidr", action="append", default=None, metavar="CIDR",
                   help="outbound_cidr_allowlist: each network the sandbox may reach")
    p.add_argument("--port", action="append", type=int, default=[],
                   help="unencrypted_ports: a port the sandbox serves")
    p.add_argument("--encrypted-port", action="append", type=int, default=[])
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--idle-timeout", type=float, metavar="S")


def _pairs(items: list[str], what: str) -> dict[str, str]:
    found = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"hutch: {what} takes KEY=VALUE, got {item!r}")
        found[key] = value
    return found


def _request_limit(text: str | None, kind: type) -> Any:
    if text is None:
        return None
    try:
        parts = [kind(p) for p in text.split(",")]
    except ValueError:
        raise SystemExit(f"hutch: {text!r} is not a number or REQUEST,LIMIT") from None
    if len(parts) > 2:
        raise SystemExit(f"hutch: {text!r}: at most REQUEST,LIMIT")
    return parts[0] if len(parts) == 1 else tuple(parts)


def _command(cmd: list[str]) -> list[str]:
    return cmd[1:] if cmd[:1] == ["--"] else cmd


def manifests(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.k8s_kind == "claim":
        return k8s.claim(pool=args.pool, name=args.name or f"{args.pool}-claim",
                         timeout=args.timeout, namespace=args.namespace,
                         tags=_pairs(args.tag, "--tag"))
    spec = k8s.shape(
        *_command(args.cmd), image=args.image, env=_pairs(args.env, "--env"),
        secrets=args.secret, workdir=args.workdir,
        cpu=_request_limit(args.cpu, float), memory=_request_limit(args.memory, int),
        gpu=args.gpu, block_network=args.block_network,
        outbound_cidr_allowlist=args.allow_cidr, unencrypted_ports=args.port,
        encrypted_ports=args.encrypted_port, tags=_pairs(args.tag, "--tag"),
        tls_verify=None if args.tls_verify is None else args.tls_verify == "true")
    name = args.name or k8s.default_name(spec)
    if args.k8s_kind == "pool":
        return k8s.warm_pool(spec, name=name, size=args.size, namespace=args.namespace,
                             idle_timeout=args.idle_timeout)
    return k8s.sandbox(spec, name=name, timeout=args.timeout, namespace=args.namespace,
                       idle_timeout=args.idle_timeout)


def cmd_render(args: argparse.Namespace) -> int:
    docs = manifests(args)
    if args.output == "json":
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}, indent=2))
    else:
        sys.stdout.write("".join("---\n" + to_yaml(doc) for doc in docs))
    return 0


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML of JSON data (dicts, lists, strings, numbers, booleans, None)."""
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return pad + "{}\n"
        out = []
        for key, item in value.items():
            name = _key(str(key))
            if _nested(item):
                out.append(f"{pad}{name}:\n{to_yaml(item, indent + 2)}")
            else:
                out.append(f"{pad}{name}: {_scalar(item)}\n")
        return "".join(out)
    if isinstance(value, list):
        if not value:
            return pad + "[]\n"
        out = []
        for item in value:
            if _nested(item):
                inner = to_yaml(item, indent + 2)
                out.append(f"{pad}- {inner[indent + 2:]}")
            else:
                out.append(f"{pad}- {_scalar(item)}\n")
        return "".join(out)
    return pad + _scalar(value) + "\n"


#: Keys written bare: names such as ``apiVersion`` or ``nvidia.com/gpu``; YAML 1.1's
#: booleans and nulls (``on``, ``no``, ``null``...) and anything else stay quoted.
_BARE_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_./-]*\Z")
_YAML_WORDS = {"y", "yes", "n", "no", "true", "false", "on", "off", "null"}


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) and key.lower() not in _YAML_WORDS \
        else json.dumps(key)


def _nested(value: Any) -> bool:
    return isinstance(value, dict | list) and bool(value)


def _scalar(value: Any) -> str:
    if isinstance(value, dict | list):
        return "{}" if isinstance(value, dict) else "[]"
    return json.dumps(value)
