"""``hutch tls trust`` / ``untrust`` / ``status``: the engine's CA in the system's trust
store, for those who want every program of the machine (curl, browsers that use it,
Python's ``ssl`` defaults) to verify tunnel URLs, not only the programs that made them.

Debian's way: the certificate goes to ``/usr/local/share/ca-certificates/`` and
``update-ca-certificates`` (package ``ca-certificates``) rebuilds
``/etc/ssl/certs/ca-certificates.crt``.  That needs root; a user's engine has its own CA,
so the file is named after the user (``hutch-<user>.crt``) and a non-root user is run
through ``sudo`` on a terminal, or told the command.  The CA may sign for 127.0.0.1 and
localhost only (X.509 name constraints), so trusting it lends it no other site.
"""

from __future__ import annotations

import argparse
import getpass
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from hutch.api import urls
from hutch.sdk.transport import request_blocking

ANCHORS = Path("/usr/local/share/ca-certificates")
BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def anchor() -> Path:
    return ANCHORS / f"hutch-{getpass.getuser()}.crt"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tls = sub.add_parser("tls", help="trust the engine's CA system-wide (or stop)")
    tls.add_argument("action", choices=["trust", "untrust", "status"])
    tls.set_defaults(func=cmd_tls)


def _as_root(argv: list[str]) -> int:
    """Run ``argv`` as root: directly when this is root, through sudo on a terminal, else
    say what to run."""
    if os.geteuid() == 0:
        return subprocess.run(argv).returncode
    if shutil.which("sudo") and sys.stdin.isatty():
        print(f"hutch: running as root: {' '.join(argv)}", file=sys.stderr)
        return subprocess.run(["sudo", *argv]).returncode
    print(f"hutch: this needs root; run:\n  sudo {' '.join(argv)}", file=sys.stderr)
    return 1


def cmd_tls(args: argparse.Namespace) -> int:
    target = anchor()
    if args.action == "status":
        trusted = target.is_file()
        print(f"{target}: {'installed' if trusted else 'not installed'}")
        return 0 if trusted else 1
    if shutil.which("update-ca-certificates") is None:
        print("hutch: update-ca-certificates is missing: apt-get install ca-certificates",
              file=sys.stderr)
        return 1
    if args.action == "untrust":
        if not target.exists():
            print(f"{target}: not installed")
            return 0
        return _as_root(["rm", "-f", str(target)]) or \
            _as_root(["update-ca-certificates", "--fresh"])
    pem = request_blocking("GET", urls.ENGINE_CA)["pem"]
    with tempfile.NamedTemporaryFile("w", suffix=".crt", delete=False) as staged:
        staged.write(pem)
    try:
        os.chmod(staged.name, 0o644)
        code = _as_root(["install", "-D", "-m", "0644", staged.name, str(target)]) or \
            _as_root(["update-ca-certificates"])
    finally:
        os.unlink(staged.name)
    if code == 0:
        print(f"{target}: installed; {BUNDLE} trusts the engine's CA (requests uses "
              f"certifi's bundle unless REQUESTS_CA_BUNDLE={BUNDLE})")
    return code
