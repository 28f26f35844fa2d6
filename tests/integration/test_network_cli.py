"""``hutch network create|ls|inspect|rm`` and ``hutch run --network``, through the real
command on the real engine: a sandbox started by ``hutch run`` reaches a server sandbox by
its alias, and a network is removed only once no sandbox is on it."""

from __future__ import annotations

import ipaddress
import json
import uuid
from typing import Any

import hutch
from tests.helpers import SERVE_HOSTNAME, hutch_cli, wait_for

SERVE = SERVE_HOSTNAME

#: prints what http://<argv[1]>:8000/ answers, trying for up to 30 s (the server may not
#: listen yet), then this sandbox's own network entries of /etc/hosts
FETCH = "import sys, time, urllib.request\n" \
    "deadline = time.monotonic() + 30\n" \
    "while True:\n" \
    "    try:\n" \
    "        print(urllib.request.urlopen(f'http://{sys.argv[1]}:8000/', timeout=3)" \
    ".read().decode())\n" \
    "        break\n" \
    "    except OSError:\n" \
    "        if time.monotonic() > deadline: raise\n" \
    "        time.sleep(0.2)\n" \
    "print(open('/etc/hosts').read())\n"


def _ok(*args: str) -> str:
    r = hutch_cli(*args)
    assert r.returncode == 0, (args, r.stdout.decode(), r.stderr.decode())
    return r.stdout.decode()


def _listed(name: str) -> dict[str, Any] | None:
    return next((n for n in json.loads(_ok("network", "ls", "--json")) if n["name"] == name),
                None)


def test_network_commands(engine: dict[str, Any]) -> None:
    name = f"cli-{uuid.uuid4().hex[:12]}"
    network_id = _ok("network", "create", name, "--label", "team=cli").strip()
    assert network_id.startswith("net-")
    server = None
    try:
        again = hutch_cli("network", "create", name)
        assert again.returncode == 125 and b"AlreadyExistsError" in again.stderr
        listed = _listed(name)
        assert listed is not None and listed["network_id"] == network_id
        assert listed["labels"] == {"team": "cli"} and listed["members"] == []
        (row,) = [line.split() for line in _ok("network", "ls").splitlines()
                  if line.split()[:1] == [name]]
        assert row[1:3] == [listed["subnet"], "0"]

        server = hutch.Sandbox.create("python3", "-c", SERVE, network=name,
                                      network_aliases=["web"], timeout=120)
        inspected = json.loads(_ok("network", "inspect", name))
        (member,) = inspected["members"]
        assert member["sandbox_id"] == server.object_id
        assert member["names"] == ["web", server.object_id]
        assert ipaddress.ip_address(member["address"]) in \
            ipaddress.ip_network(inspected["subnet"])

        client_name = f"client-{uuid.uuid4().hex[:8]}"
        out = _ok("run", "--network", name, "--network-alias", "fetcher", "--name",
                  client_name, "--", "python3", "-c", FETCH, "web")
        answer, _, hosts = out.partition("\n")
        assert answer == server.object_id
        assert f"{member['address']}\tweb {server.object_id}" in hosts
        assert "fetcher" in hosts and client_name in hosts
        # the run's sandbox left the network when it ended: off the server's /etc/hosts
        wait_for(lambda: "fetcher" not in server.open("/etc/hosts").read(),
                 what="the client leaving the server's /etc/hosts")
        assert [m["sandbox_id"] for m in json.loads(
            _ok("network", "inspect", name))["members"]] == [server.object_id]

        busy = hutch_cli("network", "rm", name)
        assert busy.returncode == 125
        assert b"ConflictError" in busy.stderr and server.object_id.encode() in busy.stderr
        assert b"terminate them first" in busy.stderr
        assert _listed(name) is not None

        server.terminate()
        server.wait(raise_on_termination=False)
        wait_for(lambda: not json.loads(_ok("network", "inspect", name))["members"],
                 what="the server leaving the network")
        assert _ok("network", "rm", name) == f"deleted {name}\n"
        assert _listed(name) is None
        gone = hutch_cli("network", "rm", name)
        assert gone.returncode == 125 and b"NotFoundError" in gone.stderr
    finally:
        if server is not None:
            server.terminate()
            server.wait(raise_on_termination=False)
        wait_for(lambda: not (_listed(name) or {}).get("members"), what="members leaving")
        hutch.Network.delete(name, allow_missing=True)


def test_run_network_errors(engine: dict[str, Any]) -> None:
    missing = hutch_cli("run", "--network", f"none-{uuid.uuid4().hex[:12]}", "--", "true")
    assert missing.returncode == 125 and b"NotFoundError" in missing.stderr
    alias_alone = hutch_cli("run", "--network-alias", "web", "--", "true")
    assert alias_alone.returncode != 0
    assert b"--network-alias needs --network" in alias_alone.stderr
    not_found = hutch_cli("network", "inspect", f"none-{uuid.uuid4().hex[:12]}")
    assert not_found.returncode == 125 and b"NotFoundError" in not_found.stderr
