"""``hutch shell`` and the ``-t`` of ``hutch run``/``hutch exec``: an interactive terminal in
a sandbox, like ``podman exec -it``.

The command runs on a pseudo-terminal of the sandbox's (``exec(pty=True)``); this side puts
its own terminal in raw mode, sends every key as typed (Ctrl-C included: it is SIGINT for
the sandbox's foreground job, not for this process), writes the output as it comes and
passes window size changes on at SIGWINCH.  The command's exit code is this process's.

Why the output is not filtered here, as ``hutch exec`` filters it on a terminal
(:class:`~hutch.sdk.termsafe.TerminalFilter`): full-screen programs (vim, top, a REPL's line
editor) draw with the very sequences the filter drops; the user asked for the sandbox's
terminal, as ``ssh`` and ``podman exec -t`` give it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hutch.api import exitcodes
from hutch.sdk import terminal
from hutch.sdk.image import Image
from hutch.sdk.process import EXEC_TIMEOUT_RETURNCODE, ContainerProcess
from hutch.sdk.sandbox import Sandbox
from hutch.tools import networkcli

#: What ``hutch shell`` runs without a command: bash where the image has it, else sh.
DEFAULT_SHELL = ["/bin/sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash; "
                 "else exec sh; fi"]


def exit_code(code: int) -> int:
    return exitcodes.TIMED_OUT if code == EXEC_TIMEOUT_RETURNCODE else code


def run_on_terminal(proc: ContainerProcess[Any], *, interactive: bool) -> int:
    """Connect ``proc`` (started with ``pty=True``) to this terminal until it ends; its exit
    code.  Without ``interactive`` stdin stays here (``-t`` alone, as podman's)."""
    if interactive:
        terminal.watch_resizes()
        proc.attach()
    else:
        proc.stdin.write_eof()
        proc.stdin.drain()
        out = sys.stdout.buffer
        for _, data in proc.events():
            out.write(data)
            out.flush()
    return exit_code(proc.wait())


def exec_on_terminal(sb: Sandbox, argv: list[str], args: argparse.Namespace,
                     env: dict[str, str]) -> int:
    proc = sb.exec(*argv, pty=True, text=False, workdir=args.workdir, env=env,
                   timeout=args.exec_timeout, user=args.user)
    return run_on_terminal(proc, interactive=args.interactive)


def cmd_shell(args: argparse.Namespace, env: dict[str, str]) -> int:
    """``hutch shell [SANDBOX] [-- CMD]``: a terminal in a running sandbox, or in a new one
    from ``--image`` (the default image) that is removed when the shell ends."""
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    args.interactive = True
    if args.sandbox_id and args.sandbox_id != "-":
        return exec_on_terminal(Sandbox.from_id(args.sandbox_id), cmd or DEFAULT_SHELL, args,
                                env)
    image = Image.from_id(args.image) if args.image else None
    sb = Sandbox.create(timeout=args.timeout, image=image, workdir=args.workdir,
                        block_network=args.block_network, **networkcli.run_options(args))
    try:
        return exec_on_terminal(sb, cmd or DEFAULT_SHELL, args, env)
    finally:
        sb.terminate(grace_period=0)


def add_parser(sub: Any, exec_options: Any) -> argparse.ArgumentParser:
    shell = sub.add_parser(
        "shell", help="an interactive terminal in a sandbox (a new one, removed at the end, "
        "when no SANDBOX is given)")
    shell.add_argument("sandbox_id", nargs="?", default="", metavar="SANDBOX",
                       help="a running sandbox's id (default: a new one)")
    shell.add_argument("--image", help="the new sandbox's image (default: the default image)")
    shell.add_argument("--timeout", type=float, default=3600, metavar="S",
                       help="the new sandbox's timeout in seconds (default 3600)")
    shell.add_argument("--block-network", action="store_true",
                       help="the new sandbox without network access")
    networkcli.add_run_options(shell)
    exec_options(shell, terminal=False)
    return shell  # type: ignore[no-any-return]
