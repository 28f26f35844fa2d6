"""``hutch tls trust``: the engine's CA in Debian's system trust store, so that any
program of the machine verifies tunnel URLs (here: a fresh Python that was told nothing),
and ``untrust`` takes it out again."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import hutch
from hutch.tools import tlstrust
from tests.helpers import hutch_cli

FETCH = """
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode().strip())
except Exception as exc:
    print("failed", type(exc).__name__)
"""


def _fetch_untold(url: str) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")}
    done = subprocess.run([sys.executable, "-I", "-c", FETCH, url], env=env,
                          capture_output=True, text=True, timeout=60)
    return done.stdout.strip()


def test_trust_and_untrust_the_engines_ca(root_engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create("python3", "-m", "http.server", "8443", "--directory", "/etc",
                              encrypted_ports=[8443], readiness_probe=hutch.Probe.with_tcp(8443),
                              timeout=120)
    try:
        sb.wait_until_ready()
        url = sb.tunnels()[8443].url + "/hostname"
        assert _fetch_untold(url) == "failed URLError"
        done = hutch_cli("tls", "trust")
        assert done.returncode == 0, done.stderr
        pem = hutch_cli("engine", "ca").stdout.decode().strip()
        assert tlstrust.anchor().read_text().strip() == pem
        assert pem.splitlines()[1] in tlstrust.BUNDLE.read_text()
        assert hutch_cli("tls", "status").returncode == 0
        assert _fetch_untold(url) == sb.object_id
        done = hutch_cli("tls", "untrust")
        assert done.returncode == 0, done.stderr
        assert not tlstrust.anchor().exists()
        assert pem.splitlines()[1] not in tlstrust.BUNDLE.read_text()
        assert hutch_cli("tls", "status").returncode == 1
        assert _fetch_untold(url) == "failed URLError"
    finally:
        sb.terminate()
        if tlstrust.anchor().exists():
            tlstrust.anchor().unlink()
            subprocess.run(["update-ca-certificates", "--fresh"], capture_output=True)
