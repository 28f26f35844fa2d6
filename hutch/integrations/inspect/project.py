"""A sample's compose project at run time, as ``docker compose up --wait`` and ``down`` run
it: the hutch networks its services share, their starts in ``depends_on`` order, the waits
for their healthchecks, and the removal of its networks once its sandboxes have ended.

No import of inspect_ai: :mod:`hutch.integrations.inspect.sandboxenv` passes in how one
service's sandbox is made.  A network is made only for services that share one (a
single-service sample has none, so warm pools still serve it: the engine keeps pools off
private networks).  Networks are named ``inspect-<task>-<run>`` and labelled with
:data:`LABEL`, the task and the run (a sample's own key, also a tag of its sandboxes), so
``inspect sandbox cleanup hutch`` finds what a killed run left.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable

import anyio

import hutch
from hutch.exception import ClientClosed, ConflictError, Error, NotFoundError
from hutch.exception import TimeoutError as HutchTimeoutError
from hutch.integrations.inspect.compose import COMPLETED, HEALTHY, ServiceSpec

logger = logging.getLogger(__name__)

#: The label (and sandbox tag) that marks what inspect made, the task's and the run's.
LABEL = "inspect-sandbox"
TASK_LABEL = "inspect-task"
RUN_LABEL = "inspect-run"
#: The start of every network name inspect's sandboxes make.
PREFIX = "inspect-"
#: Seconds a sample's cleanup waits for its sandboxes to leave its networks.
LEAVE_TIMEOUT = 30.0

_NAME_PART = re.compile(r"[^A-Za-z0-9._-]")

#: Makes one service's sandbox, on the network of that name (or none).
Starter = Callable[[ServiceSpec, "str | None"], Awaitable[hutch.Sandbox]]


def new_run() -> str:
    """A sample's key: the suffix of its networks' names and its ``inspect-run`` tag."""
    return secrets.token_hex(6)


def network_names(specs: Iterable[ServiceSpec], task_name: str, run: str) -> dict[str, str]:
    """The hutch network's name for each sample network the services join (64 characters
    of ``[A-Za-z0-9._-]`` at most)."""
    groups = sorted({spec.network for spec in specs if spec.network is not None})
    task = _NAME_PART.sub("_", task_name)[:32] or "_"
    return {group: f"{PREFIX}{task}-{run}" + (f"-{index}" if index else "")
            for index, group in enumerate(groups)}


def labels(task_tag: str, run: str) -> dict[str, str]:
    return {LABEL: "1", TASK_LABEL: task_tag, RUN_LABEL: run}


def is_inspects(network: hutch.Network, run: str | None = None) -> bool:
    """Whether inspect's sandboxes made ``network`` (for the run ``run``, if given)."""
    found = _labels(network)
    return network.name.startswith(PREFIX) and found.get(LABEL) == "1" and (
        run is None or found.get(RUN_LABEL) == run)


def _labels(network: hutch.Network) -> dict[str, str]:
    return network.labels


async def start_services(specs: list[ServiceSpec], start: Starter,
                         networks: dict[str, str]) -> None:
    """Start every service, each once the services it ``depends_on`` are started, healthy
    or completed as it asks, and wait until each with a healthcheck has passed it
    (``compose up --wait``); independent services start at once, in parallel."""
    started = {spec.name: anyio.Event() for spec in specs}
    healthy = {spec.name: anyio.Event() for spec in specs}
    made: dict[str, hutch.Sandbox] = {}

    async def run(spec: ServiceSpec) -> None:
        for other, condition in spec.depends_on:
            await (healthy if condition == HEALTHY else started)[other].wait()
            if condition == COMPLETED:
                await _completed(other, made[other])
        sandbox = await start(spec, networks.get(spec.network or ""))
        made[spec.name] = sandbox
        started[spec.name].set()
        if spec.healthcheck is not None:
            try:
                await sandbox.wait_until_ready.aio(timeout=spec.healthcheck.wait_s)
            except (HutchTimeoutError, ConflictError) as ex:
                raise RuntimeError(f"hutch sandbox: service {spec.name!r} did not pass its "
                                   f"healthcheck: {ex}") from ex
            healthy[spec.name].set()

    async with anyio.create_task_group() as group:
        for spec in specs:
            group.start_soon(run, spec)


async def _completed(name: str, sandbox: hutch.Sandbox) -> None:
    await sandbox.wait.aio(raise_on_termination=False)
    if sandbox.returncode != 0:
        raise RuntimeError(f"hutch sandbox: service {name!r} exited with "
                           f"{sandbox.returncode}, and another waits for its success")


async def make_networks(names: Iterable[str], label: dict[str, str],
                        made: list[str]) -> None:
    """Make the networks (each new: a name taken is an error), adding each name to
    ``made`` once it exists."""
    for name in names:
        await hutch.Network.create.aio(name, labels=label)
        made.append(name)


async def remove_networks(names: Iterable[str], sandboxes: Iterable[hutch.Sandbox],
                          timeout: float = LEAVE_TIMEOUT) -> list[str]:
    """Delete the networks once ``sandboxes`` (terminated) have ended and left them: the
    engine takes a member off in its cleanup, after the sandbox has ended.  Returns the
    names of those still in use at ``timeout`` (logged, left for a later cleanup)."""
    async with anyio.create_task_group() as group:
        for sandbox in sandboxes:
            group.start_soon(_ended, sandbox)
    deadline = anyio.current_time() + timeout
    left = []
    for name in names:
        if not await _delete_when_empty(name, deadline):
            logger.warning("hutch sandbox: network %s still has members; end them with: "
                           "inspect sandbox cleanup hutch", name)
            left.append(name)
    return left


async def _ended(sandbox: hutch.Sandbox) -> None:
    try:
        await sandbox.wait.aio(raise_on_termination=False)
    except (Error, OSError):  # (gone, timed out, engine away)
        pass


async def _delete_when_empty(name: str, deadline: float) -> bool:
    """Delete the network as soon as it has no members (polling them, 5 ms apart at
    first); False if it still has some at ``deadline``."""
    delay = 0.005
    while True:
        try:
            if not await (await hutch.Network.from_name.aio(name)).members.aio():
                await hutch.Network.delete.aio(name, allow_missing=True)
                return True
        except NotFoundError:
            return True
        except ConflictError:
            pass  # a member joined, or is leaving (the engine prunes those that ended)
        except ClientClosed:
            return False
        if anyio.current_time() >= deadline:
            return False
        await anyio.sleep(delay)
        delay = min(delay * 2, 0.1)


async def inspect_networks(run: str | None = None) -> list[str]:
    """The names of the networks inspect's sandboxes made (of ``run`` only, if given)."""
    return [network.name for network in await hutch.Network.list.aio()
            if is_inspects(network, run)]


async def clean_up(id: str | None) -> None:
    """``inspect sandbox cleanup hutch [ID]``: end inspect's sandboxes and delete their
    networks; with ``id``, a sandbox's id or a network's name, those of its sample only."""
    run = None
    if id is not None and id.startswith(PREFIX):
        run = next((_labels(network).get(RUN_LABEL) for network in await hutch.Network.list.aio()
                    if network.name == id and is_inspects(network)), None)
        if run is None:
            raise NotFoundError(f"no network of inspect's is called {id!r}")
    elif id is not None:
        sandbox = await hutch.Sandbox.from_id.aio(id)
        run = (await sandbox.get_tags.aio()).get(RUN_LABEL)
        await sandbox.terminate.aio()
        if run is None:
            return  # a sample of one service: nothing else is its
    ended = []
    async for sandbox in hutch.Sandbox.list.aio(
            tags={LABEL: "1"} if run is None else {RUN_LABEL: run}):
        ended.append(sandbox)
        await sandbox.terminate.aio()
    await remove_networks(await inspect_networks(run), ended)
