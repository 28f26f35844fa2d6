"""What the engine keeps of a sandbox's request: its entrypoint and the settings a
restarted daemon, a pool handing it out and the routes read back (the ``spec`` column).

Why apart from the manager: the same record is made for a new sandbox and again for a
pooled one given to its user (:meth:`SandboxManager.adopt_pooled`), and it is the one place
that decides what a sandbox runs when neither the request nor the image says.
"""

from __future__ import annotations

from hutch.api.models import CreateSandboxRequest
from hutch.engine.errors import Invalid
from hutch.engine.network import outbound
from hutch.engine.storage.store import SandboxSpec
from hutch.imagebuild.layout import Image

#: What a sandbox runs when neither its request nor its image names a command: it idles
#: until terminated (Modal's ``Sandbox.create()`` with no arguments).
DEFAULT_ENTRYPOINT = ["sleep", "infinity"]


def spec_of(req: CreateSandboxRequest, image: Image, sandbox_id: str
            ) -> tuple[list[str], SandboxSpec]:
    """The entrypoint, and what the engine keeps of a sandbox's request."""
    env = {**base_env(image.env, sandbox_id), **req.env}
    if req.pty is not None:
        env.setdefault("TERM", req.pty.term)
    if req.entrypoint:  # the arguments replace the image's Cmd, after its Entrypoint
        argv = [*image.entrypoint, *req.entrypoint]
    elif image.runs_cmd and (image.entrypoint or image.cmd):
        argv = [*image.entrypoint, *image.cmd]
    else:
        argv = list(DEFAULT_ENTRYPOINT)
    return argv, SandboxSpec(
        env=env, workdir=req.workdir or image.workdir or "/", argv=argv,
        default_entrypoint=argv == DEFAULT_ENTRYPOINT and not req.entrypoint,
        verbose=req.verbose, idle_timeout=req.idle_timeout,
        probe=req.readiness_probe.model_dump() if req.readiness_probe else None,
        layers=["sha256:" + p.name for p in image.layer_dirs],
        volumes=sorted({v.name for v in req.volumes.values()}),
        reaches_tunnels=req.network == "open" and req.outbound_cidr_allowlist is None,
        terminal=req.pty is not None,
    )


def base_env(image_env: dict[str, str], sandbox_id: str) -> dict[str, str]:
    """The image's environment with a ``PATH``, ``HOSTNAME`` and ``PYTHONUNBUFFERED=1``
    where it sets none.  Why unbuffered: a sandbox's output is read as it comes, and a
    Python program writing to a pipe or file holds up to 8 KiB back, lost when the sandbox
    is killed at its timeout (Modal's guide starts ``python -m http.server`` with
    ``timeout=10`` and prints its banner; block-buffered, nothing came).  An image or a
    sandbox may set it (empty: buffered again); docs/modal.md, "Python's output"."""
    env = dict(image_env)
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.setdefault("HOSTNAME", sandbox_id)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def checked_network(req: CreateSandboxRequest) -> list[str] | None:
    """The request's outbound allowlist, normalized (None: none), once its network settings
    and probe were found to make sense together (:class:`Invalid` otherwise)."""
    allowlist = None
    if (req.unencrypted_ports or req.encrypted_ports) and req.network != "open":
        raise Invalid("Cannot specify open ports when `block_network` is enabled")
    if req.outbound_cidr_allowlist is not None:
        if req.network != "open":
            raise Invalid("`outbound_cidr_allowlist` cannot be used when `block_network` "
                          "is enabled")
        allowlist = outbound.check_allowlist(req.outbound_cidr_allowlist)
    probe = req.readiness_probe
    if probe is not None and (probe.tcp_port is None) == (probe.exec_argv is None):
        raise Invalid("a readiness probe has either tcp_port or exec_argv")
    return allowlist
