"""``hutch network``: create, list, inspect and remove private networks between sandboxes
(:class:`hutch.Network`), and the ``--network``/``--network-alias`` options of ``hutch run``
(apart from :mod:`hutch.tools.cli` to keep each module readable)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from hutch.api import urls
from hutch.exception import ConflictError, Error
from hutch.sdk.network import Network
from hutch.sdk.transport import request_blocking


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    net = sub.add_parser("network", help="create, list, inspect and remove private networks "
                                         "between sandboxes")
    actions = net.add_subparsers(dest="action", required=True, metavar="ACTION")

    create = actions.add_parser("create", help="create a network (prints its id)")
    create.add_argument("name")
    create.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                        help="a label of the network (repeatable)")
    create.set_defaults(func=cmd_create)

    ls = actions.add_parser("ls", help="list networks: name, subnet, members, creation time")
    ls.add_argument("--json", action="store_true",
                    help="print the networks as a JSON list, members included")
    ls.set_defaults(func=cmd_ls)

    inspect = actions.add_parser("inspect", help="print a network as JSON: its subnet, labels "
                                                 "and members with their addresses and names")
    inspect.add_argument("name")
    inspect.set_defaults(func=cmd_inspect)

    rm = actions.add_parser("rm", help="remove networks (refused while a sandbox is on one)")
    rm.add_argument("names", nargs="+", metavar="NAME")
    rm.set_defaults(func=cmd_rm)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """``--network`` and ``--network-alias`` of a command that creates a sandbox."""
    p.add_argument("--network", metavar="NAME",
                   help="join the sandbox to this private network (hutch network create)")
    p.add_argument("--network-alias", action="append", default=[], metavar="NAME",
                   help="a name the network's other members find the sandbox by, besides "
                        "its id and --name (repeatable; needs --network)")


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``network``/``network_aliases`` arguments of ``Sandbox.create`` for
    :func:`add_run_options`'s options."""
    if args.network_alias and not args.network:
        raise SystemExit("hutch: --network-alias needs --network NAME")
    if not args.network:
        return {}
    return {"network": args.network, "network_aliases": list(args.network_alias)}


def labels(items: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` items as a dict (a later key wins)."""
    found = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"hutch: --label expects KEY=VALUE, got {item!r}")
        found[key] = value
    return found


def cmd_create(args: argparse.Namespace) -> int:
    network = Network.create(args.name, labels=labels(args.label))
    print(network.object_id)
    return 0


def _when(created_at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(created_at))


def cmd_ls(args: argparse.Namespace) -> int:
    networks = request_blocking("GET", urls.NETWORKS)["networks"]
    if args.json:
        print(json.dumps(networks, indent=2))
        return 0
    print(f"{'NAME':<40} {'SUBNET':<15} {'MEMBERS':>7}  CREATED")
    for info in networks:
        print(f"{info['name']:<40} {info['subnet']:<15} {len(info['members']):>7}  "
              f"{_when(info['created_at'])}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    Network.from_name(args.name)  # (an invalid name: InvalidError before any request)
    info = request_blocking("GET", urls.NETWORK.format(name=args.name))
    print(json.dumps(info, indent=2))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    """Remove each network named; one that cannot be removed (a sandbox is still on it, or
    there is none of that name) is reported and the others are still removed."""
    failed = False
    for name in args.names:
        try:
            Network.delete(name)
        except Error as exc:
            failed = True
            hint = " (terminate them first: hutch terminate ID...)" \
                if isinstance(exc, ConflictError) else ""
            print(f"hutch: {type(exc).__name__}: {exc}{hint}", file=sys.stderr)
        else:
            print(f"deleted {name}")
    return 125 if failed else 0
