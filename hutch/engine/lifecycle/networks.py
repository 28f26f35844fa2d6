"""Private networks: named networks that sandboxes join when they are created, to reach each
other by name (the services of one compose project, an agent and the database it tests).

A network is a record in the data directory (``networks/<id>.json``: its name, a /24 of
10.89.0.0/16 and its members) and, while the engine runs, a network namespace with a
bridge (:mod:`hutch.engine.network.bridges`), made again on the next join after the engine's
namespaces ended.  A member gets the next free address of the subnet (round robin, so an
address just given back is not handed out again at once) and ``eth0`` on the bridge; its
names (aliases, its name, its id) go into the ``/etc/hosts`` of every member, rewritten in
place when one joins or leaves, as Docker rewrites a container's hosts file: a lookup
reads the file each time, so a service started before its peer finds it once the peer
runs.  Why not a DNS server: it would be one more process per network, listening where
every member reaches it, to answer what a 1 KiB file answers.

Members leave when their sandbox's cleanup runs (or when the daemon that restarts finds
them gone); a network with members cannot be deleted (409), as with ``docker network rm``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from hutch.api.models import NetworkAttachment
from hutch.engine.errors import AlreadyExists, Conflict, Exhausted, NotFound
from hutch.engine.network import bridges
from hutch.engine.storage.recordids import new_id

log = logging.getLogger("hutch.network")

#: the addresses networks take their subnets from (podman names its own networks' from
#: 10.89.0.0/16 as well); one /24 each
NETWORK_RANGE = ipaddress.ip_network("10.89.0.0/16")
PREFIXLEN = 24
#: members of one network: .2 to .254 (.1 stays unused, as a gateway's would be)
FIRST_HOST, LAST_HOST = 2, 254
MAX_NETWORKS = 2 ** (PREFIXLEN - NETWORK_RANGE.prefixlen)
#: a line of /etc/hosts that ends hutch's entries and starts nothing else
_HOSTS_MARK = "# hutch network"


@dataclass(frozen=True)
class Join:
    """What a sandbox's launch needs to join its network."""

    network_id: str
    netns: Path
    host_interface: str
    address: str
    prefixlen: int
    subnet: str


class NetworkRegistry:
    def __init__(self, data_dir: Path, runtime_dir: Path,
                 hosts_file: Callable[[str], Path]) -> None:
        """``hosts_file``: the host path of a sandbox's /etc/hosts, by its id."""
        self.records_dir = data_dir / "networks"
        self.records_dir.mkdir(exist_ok=True)
        self.netns_dir = runtime_dir / "networks"
        self.netns_dir.mkdir(exist_ok=True, mode=0o700)
        self.hosts_file = hosts_file
        self.lock = trio.Lock()
        self.records: dict[str, dict[str, Any]] = {}
        for path in self.records_dir.glob("net-*.json"):
            try:
                record = json.loads(path.read_text())
                self.records[str(record["network_id"])] = record
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("skipping the unreadable network record %s: %s", path, exc)

    # records ---------------------------------------------------------------------------
    def _save(self, record: dict[str, Any]) -> None:
        path = self.records_dir / f"{record['network_id']}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(record))
        os.replace(temporary, path)

    def _by_name(self, name: str) -> dict[str, Any]:
        for record in self.records.values():
            if record["name"] == name:
                return record
        raise NotFound(f"Network {name!r} not found")

    def info(self, name: str) -> dict[str, Any]:
        return _info(self._by_name(name))

    def infos(self) -> list[dict[str, Any]]:
        return [_info(r) for r in sorted(self.records.values(), key=lambda r: r["created_at"])]

    def _netns(self, network_id: str) -> Path:
        return self.netns_dir / f"{network_id}.netns"

    async def create(self, name: str, *, must_create: bool = False,
                     labels: dict[str, str] | None = None) -> dict[str, Any]:
        """The network called ``name``, made when there is none (``must_create``: one that
        exists is :class:`AlreadyExists`)."""
        async with self.lock:
            with contextlib.suppress(NotFound):
                record = self._by_name(name)
                if must_create:
                    raise AlreadyExists(f"Network {name!r} already exists")
                return _info(record)
            taken = {r["subnet"] for r in self.records.values()}
            subnets = (str(s) for s in NETWORK_RANGE.subnets(new_prefix=PREFIXLEN))
            subnet = next((s for s in subnets if s not in taken), None)
            if subnet is None:
                raise Exhausted(f"all {MAX_NETWORKS} networks exist: delete one first")
            record = {"network_id": new_id("net"), "name": name, "subnet": subnet,
                      "created_at": time.time(), "labels": dict(labels or {}),
                      "members": {}, "next_host": FIRST_HOST}
            await self._ensure_netns(record)
            self._save(record)
            self.records[record["network_id"]] = record
            return _info(record)

    async def delete(self, name: str, is_live: Callable[[str], bool]) -> None:
        """Delete the network ``name``; :class:`Conflict` while a running sandbox is on it
        (members whose sandboxes have ended are let go first)."""
        async with self.lock:
            record = self._by_name(name)
            await self._prune(record, is_live)
            if record["members"]:
                raise Conflict(f"Network {name!r} has running sandboxes: "
                               + ", ".join(sorted(record["members"])))
            await trio.to_thread.run_sync(bridges.remove, self._netns(record["network_id"]))
            (self.records_dir / f"{record['network_id']}.json").unlink(missing_ok=True)
            del self.records[record["network_id"]]

    async def _ensure_netns(self, record: dict[str, Any]) -> Path:
        path = self._netns(record["network_id"])
        if not bridges.alive(path):
            path.unlink(missing_ok=True)  # the file of a namespace gone with the engine
            await trio.to_thread.run_sync(bridges.make, path)
        return path

    # members ---------------------------------------------------------------------------
    async def reserve(self, attachment: NetworkAttachment, sandbox_id: str,
                      sandbox_name: str | None) -> Join:
        """An address on the network ``attachment`` names for a sandbox about to be made
        (recorded now: :meth:`leave` gives it back if the sandbox does not start)."""
        async with self.lock:
            record = self._by_name(attachment.name)
            netns = await self._ensure_netns(record)
            network = ipaddress.ip_network(record["subnet"])
            used = {ipaddress.ip_address(m["address"]) for m in record["members"].values()}
            span = LAST_HOST - FIRST_HOST + 1
            start = int(record.get("next_host", FIRST_HOST))
            for step in range(span):
                host = FIRST_HOST + (start - FIRST_HOST + step) % span
                if network[host] not in used:
                    break
            else:
                raise Exhausted(f"Network {attachment.name!r} has {span} members, its most")
            names = list(dict.fromkeys([*attachment.aliases,
                                        *([sandbox_name] if sandbox_name else []),
                                        sandbox_id]))
            interface = f"m{host}"
            record["members"][sandbox_id] = {"address": str(network[host]), "names": names,
                                             "interface": interface}
            record["next_host"] = host + 1 if host < LAST_HOST else FIRST_HOST
            self._save(record)
            return Join(record["network_id"], netns, interface, str(network[host]),
                        PREFIXLEN, record["subnet"])

    def hosts_entries(self, network_id: str) -> str:
        """The lines of /etc/hosts that name the network's members."""
        record = self.records[network_id]
        lines = [f"{_HOSTS_MARK} {record['name']}"]
        for member in record["members"].values():
            lines.append(f"{member['address']}\t{' '.join(member['names'])}")
        return "\n".join(lines) + "\n"

    def _member_of(self, sandbox_id: str) -> dict[str, Any] | None:
        for record in self.records.values():
            if sandbox_id in record["members"]:
                return record
        return None

    async def joined(self, sandbox_id: str) -> None:
        """Tell the network's other members about a sandbox that has joined (a hosts file
        that cannot be written is logged: the sandbox runs all the same)."""
        try:
            async with self.lock:
                record = self._member_of(sandbox_id)
                if record is not None:
                    await self._rewrite_hosts(record)
        except Exception:
            log.exception("telling the network's members about sandbox %s", sandbox_id)

    async def leave(self, sandbox_id: str) -> None:
        """Take an ended (or never started) sandbox off its network, if it was on one."""
        if self._member_of(sandbox_id) is None:  # (most sandboxes: no lock to wait for)
            return
        async with self.lock:
            record = self._member_of(sandbox_id)
            if record is not None:
                await self._remove_members(record, [sandbox_id])

    async def _remove_members(self, record: dict[str, Any], sandbox_ids: list[str]) -> None:
        netns = self._netns(record["network_id"])
        for sandbox_id in sandbox_ids:
            member = record["members"].pop(sandbox_id)
            try:
                await trio.to_thread.run_sync(bridges.leave, netns, member["interface"])
            except bridges.BridgeSetupFailed as exc:
                log.warning("network %s: %s", record["name"], exc)
        self._save(record)
        await self._rewrite_hosts(record)

    async def _prune(self, record: dict[str, Any], is_live: Callable[[str], bool]) -> None:
        gone = [s for s in record["members"] if not is_live(s)]
        if gone:
            await self._remove_members(record, gone)

    async def recover(self, is_live: Callable[[str], bool]) -> None:
        """After a restart: let go of the members whose sandboxes ended meanwhile."""
        async with self.lock:
            for record in list(self.records.values()):
                await self._prune(record, is_live)

    async def _rewrite_hosts(self, record: dict[str, Any]) -> None:
        """Rewrite, in place (the file is bind-mounted into the sandbox), the /etc/hosts of
        every member: what precedes the network's entries, then the entries.  Called with
        the lock held, so rewrites land in the order the members changed; what they write
        is taken here, on the event loop, where the members change."""
        entries = self.hosts_entries(record["network_id"])
        files = {s: self.hosts_file(s) for s in record["members"]}

        def rewrite() -> None:
            for sandbox_id, path in files.items():
                try:
                    rewrite_hosts_file(path, entries)
                except OSError as exc:  # (a sandbox ending meanwhile)
                    log.debug("hosts file of %s: %s", sandbox_id, exc)

        await trio.to_thread.run_sync(rewrite)


#: Most bytes of a sandbox's own /etc/hosts kept when hutch's entries are rewritten.
MAX_HOSTS_FILE = 1 << 20


def rewrite_hosts_file(path: Path, entries: str) -> None:
    """Replace the network's entries in the hosts file at ``path`` (everything from the
    mark on) with ``entries``, keeping the lines before it (the sandbox's own, which it
    may have edited), without following a link or reading more than ``MAX_HOSTS_FILE``."""
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        own = os.pread(fd, MAX_HOSTS_FILE, 0).decode(errors="replace").splitlines()
        mark = next((i for i, line in enumerate(own) if line.startswith(_HOSTS_MARK)),
                    len(own))
        data = "".join(line + "\n" for line in own[:mark]).encode() + entries.encode()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def _info(record: dict[str, Any]) -> dict[str, Any]:
    return {"network_id": record["network_id"], "name": record["name"],
            "subnet": record["subnet"], "created_at": record["created_at"],
            "labels": record.get("labels", {}),
            "members": [{"sandbox_id": s, "address": m["address"], "names": m["names"]}
                        for s, m in record["members"].items()]}
