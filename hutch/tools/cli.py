"""The ``hutch`` command: a thin argparse front end over the SDK, like any other user."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from hutch.api import exitcodes, urls
from hutch.exception import Error
from hutch.sdk import secretstore
from hutch.sdk.image import Image
from hutch.sdk.process import EXEC_TIMEOUT_RETURNCODE, ContainerProcess
from hutch.sdk.sandbox import Sandbox
from hutch.sdk.termsafe import TerminalFilter
from hutch.sdk.transport import events_blocking, request_blocking
from hutch.sdk.volume import Volume
from hutch.tools import (
    enginecli,
    imagecli,
    k8scli,
    networkcli,
    shellcli,
    tlstrust,
)


def _env_pairs(items: Sequence[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"hutch: --env expects KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def _command(args: argparse.Namespace) -> list[str]:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise SystemExit("hutch: no command given (use: -- CMD ARGS...)")
    return cmd


def _forward_stdin(proc: ContainerProcess[Any]) -> None:
    def pump() -> None:
        while chunk := os.read(sys.stdin.fileno(), 65536):
            proc.stdin.write(chunk)
            proc.stdin.drain()
        proc.stdin.write_eof()
        proc.stdin.drain()

    threading.Thread(target=pump, daemon=True).start()


class _Sink:
    """Where one stream of sandbox output goes.  A pipe or a file gets the bytes unchanged
    (scripts rely on that); a terminal gets them through a :class:`TerminalFilter`, so that
    escape sequences from the sandbox cannot write the clipboard, set the title or rewrite
    the screen, unless ``--raw`` asked for them as they are."""

    def __init__(self, out: BinaryIO, raw: bool) -> None:
        self.out = out
        self.filter = None if raw or not out.isatty() else TerminalFilter()

    def write(self, data: bytes) -> None:
        self.out.write(data if self.filter is None else self.filter.feed(data))
        self.out.flush()

    def close(self) -> None:
        if self.filter is not None:
            self.out.write(self.filter.flush())
            self.out.flush()


def _sinks(raw: bool) -> dict[int, _Sink]:
    return {1: _Sink(sys.stdout.buffer, raw), 2: _Sink(sys.stderr.buffer, raw)}


def _stream(proc: ContainerProcess[Any], raw: bool) -> int:
    sinks = _sinks(raw)
    try:
        for fd, data in proc.events():
            sinks[fd].write(data)
    finally:
        for sink in sinks.values():
            sink.close()
    code = proc.wait()
    return exitcodes.TIMED_OUT if code == EXEC_TIMEOUT_RETURNCODE else code


def _exec_and_stream(sb: Sandbox, args: argparse.Namespace) -> int:
    if args.tty:
        return shellcli.exec_on_terminal(sb, _command(args), args, _env_pairs(args.env))
    proc = sb.exec(*_command(args), workdir=args.workdir, env=_env_pairs(args.env),
                   timeout=args.exec_timeout, user=args.user)
    if args.interactive:
        _forward_stdin(proc)
    else:
        proc.stdin.write_eof()
        proc.stdin.drain()
    return _stream(proc, args.raw)


def cmd_run(args: argparse.Namespace) -> int:
    image = Image.from_id(args.image) if args.image else None
    sb = Sandbox.create(timeout=args.timeout, name=args.name, env=_env_pairs(args.env),
                        workdir=args.workdir, image=image, **networkcli.run_options(args))
    try:
        return _exec_and_stream(sb, args)
    finally:
        sb.terminate(grace_period=0)


def cmd_exec(args: argparse.Namespace) -> int:
    return _exec_and_stream(Sandbox.from_id(args.sandbox_id), args)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def cmd_ps(args: argparse.Namespace) -> int:
    rows = request_blocking("GET", urls.SANDBOXES)["sandboxes"]
    print(f"{'SANDBOX ID':<26} {'NAME':<20} {'STATE':<9} {'AGE':>5}  TAGS")
    now = time.time()
    for info in rows:
        tags = ",".join(f"{k}={v}" for k, v in sorted(info["tags"].items()))
        print(f"{info['sandbox_id']:<26} {info['name'] or '-':<20} {info['state']:<9} "
              f"{_age(now - info['created_at']):>5}  {tags}")
    return 0


def cmd_terminate(args: argparse.Namespace) -> int:
    for sandbox_id in args.sandbox_ids:
        sb = Sandbox.from_id(sandbox_id)
        sb.terminate(grace_period=args.grace)
        print(f"{sandbox_id} terminated (exit code {sb.returncode})")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    sinks = _sinks(args.raw)
    try:
        for event in events_blocking(urls.SANDBOX_LOGS.format(sandbox_id=args.sandbox_id),
                                     {"follow": "true" if args.follow else "false"}):
            if event.get("data") is not None:
                sinks[event["fd"]].write(event["data"])
    finally:
        for sink in sinks.values():
            sink.close()
    return 0


def cmd_volume(args: argparse.Namespace) -> int:
    if args.action == "ls":
        print(f"{'NAME':<40} {'ID':<26} CREATED")
        for vol in request_blocking("GET", urls.VOLUMES)["volumes"]:
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(vol["created_at"]))
            print(f"{vol['name']:<40} {vol['volume_id']:<26} {created}")
        return 0
    if not args.name:
        raise SystemExit(f"hutch: volume {args.action} needs a volume name")
    if args.action == "create":
        print(Volume.from_name(args.name, create_if_missing=True).hydrate().object_id)
    elif args.action == "rm":
        Volume.delete(args.name)
        print(f"deleted {args.name}")
    elif args.action == "put":
        if not args.local:
            raise SystemExit("hutch: volume put NAME LOCAL [REMOTE]")
        volume, local = Volume.from_name(args.name), Path(args.local)
        remote = args.remote or f"/{local.name}"
        with volume.batch_upload(force=True) as batch:
            if local.is_dir():
                batch.put_directory(local, remote)
            else:
                batch.put_file(local, remote)
        print(f"uploaded {local} to {args.name}:{remote}")
    else:
        if not args.local:
            raise SystemExit("hutch: volume get NAME REMOTE [LOCAL]")
        remote, target = args.local, args.remote or Path(args.local).name
        with open(target, "wb") as f:
            size = Volume.from_name(args.name).read_file_into_fileobj(remote, f)
        print(f"wrote {target} ({size} bytes)")
    return 0


def _secret_values(args: argparse.Namespace) -> dict[str, str]:
    """``KEY=VALUE`` arguments over ``--from-dotenv`` / ``--from-json`` files."""
    values: dict[str, str] = {}
    for option, path in (("--from-dotenv", args.from_dotenv), ("--from-json", args.from_json)):
        if path and not Path(path).is_file():
            raise SystemExit(f"hutch: {option}: no file {path!r}")
    if args.from_dotenv:
        from dotenv import dotenv_values

        values.update({k: v or "" for k, v in dotenv_values(args.from_dotenv).items()})
    if args.from_json:
        try:
            loaded = json.loads(Path(args.from_json).read_text())
        except ValueError:
            loaded = None
        if not isinstance(loaded, dict) or not all(isinstance(v, str) for v in loaded.values()):
            raise SystemExit("hutch: --from-json needs a JSON object of string values")
        values.update(loaded)
    from_stdin = [item for item in args.values if item.partition("=")[2] == "-"]
    if len(from_stdin) > 1:
        raise SystemExit("hutch: only one KEY=- can read its value from stdin")
    for item in args.values:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"hutch: {key!r}: give each value as KEY=VALUE")
        if item in from_stdin:  # other users see command lines (ps), not a pipe
            if sys.stdin.isatty():
                import getpass

                value = getpass.getpass(f"{key}: ")  # (not echoed)
            else:
                value = sys.stdin.read().removesuffix("\n")
        values[key] = value
    if not values:
        raise SystemExit("hutch: a secret needs at least one KEY=VALUE (or --from-dotenv)")
    return values


def cmd_secret(args: argparse.Namespace) -> int:
    """Named secrets, as ``modal secret`` manages them (values are never printed)."""
    if args.action == "list":
        print(f"{'NAME':<40} {'CREATED':<17} KEYS")
        for stored in secretstore.listing():
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(stored.created_at))
            print(f"{stored.name:<40} {created:<17} {', '.join(sorted(stored.env))}")
        return 0
    if not args.name or "=" in args.name:  # (a KEY=VALUE where the name goes: not echoed)
        raise SystemExit(f"hutch: secret {args.action} needs a secret name first")
    if args.action == "create":
        values = _secret_values(args)
        if args.force:
            secretstore.replace(args.name, values)
        else:
            secretstore.create(args.name, values)
        print(f"created secret {args.name} with keys {', '.join(sorted(values))}")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise SystemExit("hutch: secret delete: confirm with --yes")
        if input(f"Delete the secret {args.name}? [y/N] ").strip().lower() not in ("y", "yes"):
            return 1
    secretstore.delete(args.name)
    print(f"deleted secret {args.name}")
    return 0


def _sandbox_path(spec: str) -> tuple[str, str] | None:
    """``SANDBOX_ID:PATH`` -> (id, path); a local path -> None."""
    head, sep, path = spec.partition(":")
    if sep and head.startswith("sb-") and "/" not in head:
        return head, path or "/"
    return None


def cmd_cp(args: argparse.Namespace) -> int:
    src, dst = _sandbox_path(args.src), _sandbox_path(args.dst)
    if (src is None) == (dst is None):
        raise SystemExit("hutch: cp copies between the host and a sandbox: "
                         "cp LOCAL SANDBOX_ID:PATH or cp SANDBOX_ID:PATH LOCAL")
    if dst is not None:
        Sandbox.from_id(dst[0]).filesystem.copy_from_local(args.src, dst[1])
    else:
        assert src is not None
        target = Path(args.dst)
        if target.is_dir():
            target = target / Path(src[1]).name
        Sandbox.from_id(src[0]).filesystem.copy_to_local(src[1], target)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from hutch.tools.doctor import report, run_checks

    checks = run_checks()
    print(report(checks))
    return 1 if any(c.status == "fail" for c in checks) else 0


def _add_exec_options(p: argparse.ArgumentParser, terminal: bool = True) -> None:
    p.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("-w", "--workdir", help="absolute working directory in the sandbox")
    p.add_argument("-u", "--user", help="run as this user of the image: NAME or UID, "
                   "optionally :GROUP or :GID")
    if terminal:
        p.add_argument("-i", "--interactive", action="store_true", help="forward stdin")
        p.add_argument("-t", "--tty", action="store_true",
                       help="on a pseudo-terminal in the sandbox: with -i, this terminal "
                            "in raw mode and its size followed (like podman's -it)")
        _add_raw_option(p)
    p.add_argument("--exec-timeout", type=float, default=None, metavar="S",
                   help="kill the command (and its children) after S seconds")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")


def _add_raw_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--raw", action="store_true",
                   help="on a terminal too, write the sandbox's output as it is, escape "
                        "sequences included (by default only colours pass)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hutch", description="Local rootless sandboxes.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a command in a new sandbox, then remove it")
    run.add_argument("--timeout", type=float, default=300, metavar="S",
                     help="sandbox timeout in seconds (default 300)")
    run.add_argument("--name")
    run.add_argument("--image", help="image reference (default: the Debian base)")
    networkcli.add_run_options(run)
    _add_exec_options(run)
    run.set_defaults(func=cmd_run)

    ex = sub.add_parser("exec", help="run a command in a running sandbox")
    ex.add_argument("sandbox_id")
    _add_exec_options(ex)
    ex.set_defaults(func=cmd_exec)

    shell = shellcli.add_parser(sub, _add_exec_options)
    shell.set_defaults(func=lambda args: shellcli.cmd_shell(args, _env_pairs(args.env)))

    sub.add_parser("ps", help="list running sandboxes").set_defaults(func=cmd_ps)

    term = sub.add_parser("terminate", help="terminate sandboxes")
    term.add_argument("sandbox_ids", nargs="+")
    term.add_argument("--grace", type=float, default=3.0, help="seconds between TERM and KILL")
    term.set_defaults(func=cmd_terminate)

    logs = sub.add_parser("logs", help="print a sandbox's entrypoint output")
    logs.add_argument("sandbox_id")
    logs.add_argument("-f", "--follow", action="store_true")
    _add_raw_option(logs)
    logs.set_defaults(func=cmd_logs)

    enginecli.add_parser(sub)
    enginecli.add_context_parser(sub)

    imagecli.add_parser(sub)

    vol = sub.add_parser("volume", help="create, list, remove, upload to, download from volumes")
    vol.add_argument("action", choices=["create", "ls", "rm", "put", "get"])
    vol.add_argument("name", nargs="?", default="")
    vol.add_argument("local", nargs="?", default="",
                     help="put: the local file or directory; get: the path in the volume")
    vol.add_argument("remote", nargs="?", default="",
                     help="put: the path in the volume; get: the local file to write")
    vol.set_defaults(func=cmd_volume)

    networkcli.add_parser(sub)

    sec = sub.add_parser("secret", help="create, list and delete named secrets")
    sec.add_argument("action", choices=["create", "list", "delete"])
    sec.add_argument("name", nargs="?", default="")
    sec.add_argument("values", nargs="*", metavar="KEY=VALUE")
    sec.add_argument("--from-dotenv", metavar="FILE", help="create: values of a .env file")
    sec.add_argument("--from-json", metavar="FILE", help="create: values of a JSON object")
    sec.add_argument("--force", action="store_true", help="create: replace an existing one")
    sec.add_argument("-y", "--yes", action="store_true", help="delete: do not ask")
    sec.set_defaults(func=cmd_secret)

    cp = sub.add_parser("cp", help="copy a file between the host and a sandbox")
    cp.add_argument("src", help="LOCAL or SANDBOX_ID:PATH")
    cp.add_argument("dst", help="SANDBOX_ID:PATH or LOCAL")
    cp.set_defaults(func=cmd_cp)

    sub.add_parser("doctor", help="check the host").set_defaults(func=cmd_doctor)
    tlstrust.add_parser(sub)
    k8scli.add_parser(sub)
    from hutch.tools import mcpserver  # (it imports the mcp SDK only when `hutch mcp` runs)

    mcpserver.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except Error as exc:
        print(f"hutch: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 125
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
