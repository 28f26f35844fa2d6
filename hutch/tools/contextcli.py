"""``hutch context create|use|ls|show|rm``: named engines, as ``docker context`` keeps
them (:mod:`hutch.sdk.contexts`); ``use`` changes where every later SDK program and CLI
call of this user goes, until ``hutch context use default``."""

from __future__ import annotations

import argparse
import shlex

from hutch.sdk import contexts, endpoint


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ctx = sub.add_parser("context", help="name remote engines and choose one")
    actions = ctx.add_subparsers(dest="context_action", required=True)
    create = actions.add_parser("create", help="name an engine")
    create.add_argument("name")
    create.add_argument("--engine", required=True,
                        help="https://HOST:PORT, ssh://[USER@]HOST[:PORT][/socket] or "
                             "unix:///path")
    create.add_argument("--credentials", metavar="DIR",
                        help="an https:// engine's client bundle")
    create.add_argument("--ssh-option", action="append", default=[], metavar="ARG",
                        help="an argument for ssh (each one: --ssh-option=-i "
                             "--ssh-option=~/.ssh/key)")
    use = actions.add_parser("use", help="send every later call there (default: local)")
    use.add_argument("name")
    remove = actions.add_parser("rm", help="forget a context")
    remove.add_argument("name")
    actions.add_parser("ls", help="list contexts")
    actions.add_parser("show", help="print the engine in force now")
    ctx.set_defaults(func=cmd_context)


def cmd_context(args: argparse.Namespace) -> int:
    action = args.context_action
    if action == "create":
        made = contexts.create(args.name, args.engine, args.credentials, args.ssh_option)
        print(f"created {made.name}: {made.engine} (`hutch context use {made.name}`)")
    elif action == "use":
        contexts.use(args.name)
        print(f"using {args.name}")
    elif action == "rm":
        contexts.remove(args.name)
        print(f"removed {args.name}")
    elif action == "ls":
        current, found = contexts.listed()
        print(f"{'NAME':<24} {'ENGINE':<48} CREDENTIALS")
        for context in found:
            mark = "*" if context.name == current else " "
            engine = context.engine or "(this machine's engine)"
            extra = context.credentials or " ".join(shlex.quote(o)
                                                    for o in context.ssh_options)
            print(f"{context.name + mark:<24} {engine:<48} {extra}")
    else:
        print(endpoint.current().url)
    return 0
