"""``hutch engine``: start, stop, inspect the engine; serve it to other machines; and
``hutch context``: which engine, this machine's or another's, the commands talk to.

``start|stop|status|ca`` act on the engine the SDK would use (a remote one too: ``stop``
there asks it to shut down).  ``socket`` starts this user's engine if needed and prints its
socket (what ``ssh://`` engine URLs ask for).  ``serve --listen tcp://ADDR:PORT`` runs the
TLS gateway in the foreground (:mod:`hutch.engine.remote.gateway`) and
``remote-credentials`` issues the client bundles it admits.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import socket
import sys
from pathlib import Path

import trio

from hutch.api import paths, urls
from hutch.exception import Error, InvalidError
from hutch.sdk import contexts, endpoint, launcher
from hutch.sdk.transport import request_blocking


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    eng = sub.add_parser("engine", help="start, stop, inspect or serve the engine")
    actions = eng.add_subparsers(dest="action", required=True)
    for name, text in (("start", "start the engine (and build its default image)"),
                       ("stop", "stop the engine"), ("status", "say whether it runs"),
                       ("ca", "print the CA that signs encrypted tunnels"),
                       ("socket", "start this user's engine if needed; print its socket")):
        actions.add_parser(name, help=text).set_defaults(func=cmd_engine)
    serve = actions.add_parser("serve", help="serve the engine's API to other machines")
    serve.add_argument("--listen", required=True, metavar="tcp://ADDR:PORT",
                       help="where to listen (TLS; clients need a bundle from "
                            "`hutch engine remote-credentials`)")
    serve.set_defaults(func=cmd_serve)
    creds = actions.add_parser("remote-credentials",
                               help="issue (or revoke, or list) clients of `engine serve`")
    creds.add_argument("--name", default="client", help="the client's name (default: client)")
    creds.add_argument("--host", action="append", default=[], metavar="NAME_OR_IP",
                       help="a name clients reach this machine by (each one; 127.0.0.1 and "
                            "localhost always)")
    creds.add_argument("--out", help="the bundle's directory (default: "
                                     "./hutch-credentials-NAME)")
    creds.add_argument("--revoke", action="store_true", help="revoke NAME's bundle")
    creds.add_argument("--list", action="store_true", help="list the clients")
    creds.set_defaults(func=cmd_credentials)


def cmd_engine(args: argparse.Namespace) -> int:
    if args.action == "ca":
        doc = request_blocking("GET", urls.ENGINE_CA)
        print(doc["pem"], end="")
        print(f"# {doc['path']}: trust it to verify sandboxes' encrypted ports",
              file=sys.stderr)
        return 0
    if args.action == "socket":
        _local_only("socket")
        request_blocking("GET", urls.ENGINE)
        print(paths.socket_path())
        return 0
    if args.action == "start":
        info = request_blocking("GET", urls.ENGINE)
        request_blocking("POST", urls.IMAGES_DEFAULT)
        print(f"engine running: pid {info['pid']}, runtime {info['runtime']}, "
              f"user namespace {info['userns_mode']}")
        return 0
    try:
        info = request_blocking("GET", urls.ENGINE, autostart=False)
    except Error:
        info = None
    if args.action == "status":
        if info is None:
            print("engine not running")
            return 3
        for key, value in info.items():
            print(f"{key}: {value}")
        return 0
    if info is not None:
        request_blocking("POST", urls.ENGINE_SHUTDOWN, autostart=False)
    stopped = endpoint.current().local and launcher.stop_engine()
    print("engine stopped" if info is not None or stopped else "engine was not running")
    return 0


def _local_only(what: str) -> None:
    where = endpoint.current()
    if not where.local:
        raise InvalidError(f"`engine {what}` acts on this machine's engine, and HUTCH_ENGINE "
                           f"(or the context) chooses {where.url}: run it on the engine's "
                           "machine, or unset it")


def cmd_credentials(args: argparse.Namespace) -> int:
    from hutch.engine.errors import EngineError

    try:
        return _credentials(args)
    except EngineError as exc:  # (the engine's own error kinds, said as the SDK's)
        raise (InvalidError if exc.type == "invalid" else Error)(exc.message) from None


def _credentials(args: argparse.Namespace) -> int:
    from hutch.engine.remote import credentials

    _local_only("remote-credentials")
    data = paths.data_dir()
    if args.list:
        for name in credentials.clients(data):
            print(name)
        return 0
    if args.revoke:
        known = credentials.revoke(data, args.name)
        print(f"revoked {args.name}" if known else f"no client named {args.name}")
        return 0 if known else 1
    hosts = args.host or [socket.gethostname()]
    credentials.ensure_server(data, hosts)
    out = Path(args.out or f"hutch-credentials-{args.name}").resolve()
    credentials.issue_client(data, args.name, out)
    print(f"wrote {out} (ca.crt, client.crt, client.key, token): copy it to the client, "
          f"then there:\n  hutch context create NAME --engine https://HOST:PORT "
          f"--credentials {out.name}\n  hutch context use NAME\nand here: hutch engine "
          f"serve --listen tcp://0.0.0.0:PORT (names in the server certificate: "
          f"{', '.join(sorted({'127.0.0.1', 'localhost', *hosts}))})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from hutch.engine.remote import credentials, gateway

    _local_only("serve")
    try:
        host, port = gateway.parse_listen(args.listen)
    except ValueError as exc:
        raise InvalidError(str(exc)) from None
    data = paths.data_dir()
    remote = credentials.remote_dir(data)
    if not (remote / "server.crt").exists() or not credentials.clients(data):
        raise InvalidError("no client may connect yet: issue a bundle with `hutch engine "
                           "remote-credentials --host NAME` first")
    request_blocking("GET", urls.ENGINE)  # the engine runs (started now if it did not)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        stream=sys.stderr)
    server = gateway.Gateway(data, paths.socket_path(), start_engine=_start_engine)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(server.serve, host, port)
            shown = ", ".join(f"{a[0]}:{a[1]}" for a in addresses)
            print(f"serving the hutch engine of {os.environ.get('USER') or os.getuid()} "
                  f"on {shown} (TLS, client certificates and tokens)", file=sys.stderr,
                  flush=True)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(run)
    return 0


def _start_engine() -> None:
    request_blocking("GET", urls.ENGINE)


def add_context_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``hutch context create|use|ls|show|rm``: named engines, as ``docker context`` keeps
    them (:mod:`hutch.sdk.contexts`); ``use`` changes where every later SDK program and
    CLI call of this user goes, until ``hutch context use default``."""
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
