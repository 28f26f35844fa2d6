"""The body of ``POST /v1/sandboxes``, checked, from ``Sandbox.create``'s arguments.

Shared by :meth:`Sandbox.create` and :meth:`App.warm_pool`, whose pools are declared with
the same arguments a matching create passes.  Every check runs here, before anything is
sent, and raises :class:`InvalidError` as Modal does.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

from hutch.exception import InvalidError
from hutch.sdk import options
from hutch.sdk.image import Image
from hutch.sdk.memorysnapshot import refuse as refuse_memory_snapshots
from hutch.sdk.network import attachment
from hutch.sdk.probe import Probe
from hutch.sdk.secret import Secret, merge_secrets
from hutch.sdk.volume import Volume


class AppRef(Protocol):
    """What a create request needs of its app (:class:`hutch.sdk.app.App`, whose
    ``warm_pool`` makes requests too: its callers check the type)."""

    async def resolve_id(self) -> str: ...


async def create_request(
    args: tuple[str, ...], *, app: AppRef | None, name: str | None,
    tags: Mapping[str, str] | None, image: Image | None,
    env: Mapping[str, str | None] | None, secrets: Collection[Secret] | None,
    timeout: int | float, workdir: str | None, block_network: bool, verbose: bool,
    idle_timeout: int | None, cpu: float | tuple[float, float] | None,
    memory: int | tuple[int, int] | None, ephemeral_disk: int | None, pids_limit: int | None,
    volumes: Mapping[str | os.PathLike[str], Volume] | None,
    outbound_cidr_allowlist: Sequence[str] | None, cidr_allowlist: Sequence[str] | None,
    encrypted_ports: Sequence[int], unencrypted_ports: Sequence[int],
    readiness_probe: Probe | None, unsupported: Mapping[str, Any],
    network: object = None, network_aliases: object = (),
) -> dict[str, Any]:
    """The request body; ``unsupported`` holds the Modal parameters hutch has no use for,
    each of which must be unset."""
    if unsupported.get("_experimental_enable_snapshot") not in (None, False):
        await refuse_memory_snapshots("Sandbox.create: `_experimental_enable_snapshot`")
    options.reject_unsupported({
        **unsupported,
        "outbound_cidr_allowlist": outbound_cidr_allowlist, "cidr_allowlist": cidr_allowlist,
        "encrypted_ports": encrypted_ports, "unencrypted_ports": unencrypted_ports,
        "block_network": block_network,
    })
    entrypoint = options.check_args(args, "entrypoint")
    if name is not None:
        options.check_object_name(name, "Sandbox")
    if image is not None and not isinstance(image, Image):
        raise InvalidError(f"image must be a hutch.Image, not {type(image).__name__}")
    if not isinstance(block_network, bool) or not isinstance(verbose, bool):
        raise InvalidError("block_network and verbose must be True or False")
    allowlist = outbound_cidr_allowlist if outbound_cidr_allowlist is not None \
        else cidr_allowlist
    if allowlist is not None and (isinstance(allowlist, str) or not all(
            isinstance(c, str) for c in allowlist)):
        raise InvalidError("`outbound_cidr_allowlist` must be a list of CIDR strings")
    for cidr in allowlist or ():
        options.check_text(cidr, f"`outbound_cidr_allowlist`: {options.shown(cidr)}")
    body: dict[str, Any] = {
        "unencrypted_ports": options.check_ports(unencrypted_ports, "unencrypted_ports"),
        "encrypted_ports": options.check_ports(encrypted_ports, "encrypted_ports"),
        "network": "none" if block_network else "open",
        "outbound_cidr_allowlist": None if allowlist is None else list(allowlist),
        "entrypoint": entrypoint or None,
        "name": name,
        "tags": options.check_str_dict(tags, "tags"),
        # each secret's variables are checked by merge_secrets, ``env``'s here
        "env": merge_secrets(secrets, options.env_without_none(env)),
        "workdir": options.check_workdir(workdir),
        "timeout": options.check_timeout(timeout, "timeout", optional=False),
        "idle_timeout": options.check_timeout(idle_timeout, "idle_timeout", optional=True),
        "verbose": verbose,
        **options.check_resources(cpu=cpu, memory=memory, ephemeral_disk=ephemeral_disk,
                                  pids_limit=pids_limit),
    }
    if readiness_probe is not None:
        if not isinstance(readiness_probe, Probe):
            raise InvalidError("`readiness_probe` must be a hutch.Probe")
        body["readiness_probe"] = readiness_probe.spec()
    if volumes:
        if not isinstance(volumes, Mapping) or not all(
                isinstance(v, Volume) for v in volumes.values()):
            raise InvalidError("`volumes` must be a dict of mount path to hutch.Volume")
        body["volumes"] = {options.check_mount_path(p): v.mount() for p, v in volumes.items()}
        for volume in volumes.values():
            await volume._resolve()  # (a lazy from_name: made, or NotFoundError, now)
    joined = await attachment(network, network_aliases)
    if joined is not None:
        body["network_attachment"] = joined
    if app is not None:
        body["app_id"] = await app.resolve_id()
    if image is not None:
        body["image"] = await image.resolve()
        mounts = image._mounts()
        if mounts:
            body["local_mounts"] = [m.wire() for m in mounts]
    return body
