"""Wire types of image builds: bases (Debian, registry, OCI, an existing image) and the
steps applied on them.  Kept apart from :mod:`hutch.api.models` so that each stays
readable."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator

from hutch.api.models import _check_argv, _check_env, _check_workdir, _Wire

#: Python version -> the Debian suite whose python3 it is (``Image.debian_slim``).
DEBIAN_PYTHON_SUITES = {"3.11": "bookworm", "3.13": "trixie", "3.14": "forky"}
#: Every series ``debian_slim`` takes; those Debian does not package (and every ``X.Y.Z``)
#: come from python-build-standalone, on :data:`STANDALONE_SUITE`.
PYTHON_SERIES = ("3.10", "3.11", "3.12", "3.13", "3.14")
STANDALONE_SUITE = "trixie"
PYTHON_VERSION = re.compile(r"3\.(\d{1,2})(\.\d{1,2})?")


def check_python_version(v: object) -> str:
    """``v`` if it is ``X.Y`` of :data:`PYTHON_SERIES` or an ``X.Y.Z`` of one."""
    match = PYTHON_VERSION.fullmatch(v) if isinstance(v, str) else None
    if match is None or f"3.{match.group(1)}" not in PYTHON_SERIES:
        raise ValueError(f"unsupported Python version {v!r}: hutch supports "
                         f"{', '.join(PYTHON_SERIES)} (or a full version such as 3.12.7)")
    assert isinstance(v, str)
    return v


class DebianSlimStep(_Wire):
    """Base: Debian with Python (Debian's own or python-build-standalone's)."""

    kind: Literal["debian_slim"] = "debian_slim"
    python_version: str

    _version = field_validator("python_version")(
        classmethod(lambda cls, v: check_python_version(v)))


class FromIdStep(_Wire):
    """Base: an image the engine already has, by reference or manifest digest."""

    kind: Literal["from_id"] = "from_id"
    ref: str = Field(min_length=1, max_length=512)


class FromRegistryStep(_Wire):
    """Base: an image pulled from a registry with skopeo (``credentials``: ``user:pass``,
    never logged or part of a cache key)."""

    kind: Literal["from_registry"] = "from_registry"
    ref: str = Field(min_length=1, max_length=512, pattern=r"^[^\s/][^\s]*$")
    credentials: str | None = None
    #: ``basic``: ``credentials`` are ``user:password``; ``aws``: ``key_id:secret:region``,
    #: exchanged for an Amazon ECR token
    auth: Literal["basic", "aws"] = "basic"
    force_build: bool = False
    #: python-build-standalone's Python of this series at /usr/local (Modal's add_python)
    add_python: str | None = Field(default=None, pattern=r"^3\.1[0-4]$")


class FromOCIStep(_Wire):
    """Base: an OCI image layout directory (``archive`` false) or an OCI archive file."""

    kind: Literal["from_oci"] = "from_oci"
    path: str
    archive: bool = False
    tag: str | None = None

    _path = field_validator("path")(classmethod(lambda cls, v: _check_workdir(v)))


class RunStep(_Wire):
    """Shell commands run in order in a build container (host network); one layer.

    ``secret_env`` is like ``env`` but its values never reach logs, records or cache keys
    (only a hash of them does).
    """

    kind: Literal["run"] = "run"
    commands: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    secret_env: dict[str, str] = Field(default_factory=dict)
    description: str = ""
    force_build: bool = False
    #: directories kept between builds and out of the layer (``RUN --mount=type=cache``)
    cache_mounts: list[str] = Field(default_factory=list, max_length=16)

    _env = field_validator("env", "secret_env")(classmethod(lambda cls, v: _check_env(v)))
    _argv = field_validator("commands")(classmethod(lambda cls, v: _check_argv(v)))
    _mounts = field_validator("cache_mounts")(
        classmethod(lambda cls, v: [_check_workdir(p) for p in v]))


#: ``user``, ``user:group``, ``uid`` or ``uid:gid`` (names looked up in the image).
OWNER = r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31})?$"


class CopyStep(_Wire):
    """Files: an uploaded context tar (by digest) unpacked at ``dest``; one layer.

    ``as_file``: the context holds one file, which becomes ``dest`` itself unless ``dest``
    is a directory of the image (Docker's ``COPY file /dest``).  ``chown``: the owner of
    everything copied (Docker's ``--chown``).
    """

    kind: Literal["copy"] = "copy"
    context: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    dest: str
    description: str = ""
    as_file: bool = False
    chown: str | None = Field(default=None, pattern=OWNER)

    _dest = field_validator("dest")(classmethod(lambda cls, v: _check_workdir(v)))


class CopyFromStep(_Wire):
    """Files from another image (``COPY --from=stage``): each of ``sources`` (absolute,
    resolved inside that image; ``*``/``?`` in the last part) goes to ``dest``, a
    directory's contents into it; one layer."""

    kind: Literal["copy_from"] = "copy_from"
    image: str = Field(min_length=1, max_length=512)
    sources: list[str] = Field(min_length=1, max_length=64)
    dest: str
    description: str = ""
    as_file: bool = False
    chown: str | None = Field(default=None, pattern=OWNER)

    _dest = field_validator("dest")(classmethod(lambda cls, v: _check_workdir(v)))
    _sources = field_validator("sources")(
        classmethod(lambda cls, v: [_check_workdir(p) for p in v]))


class ConfigStep(_Wire):
    """Image settings only (no layer): env (``$VAR`` expanded), workdir, entrypoint, cmd,
    the user later build steps run as, labels and exposed ports."""

    kind: Literal["config"] = "config"
    env: dict[str, str] | None = None
    workdir: str | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    user: str | None = Field(default=None, pattern=OWNER)
    #: the shell later run steps use (``Image.shell``, ``["/bin/bash", "-c"]``)
    shell: list[str] | None = Field(default=None, min_length=1, max_length=16)
    labels: dict[str, str] | None = None
    exposed_ports: list[str] | None = Field(default=None, max_length=256)

    _labels = field_validator("labels")(
        classmethod(lambda cls, v: v if v is None else _check_env(v)))
    _ports = field_validator("exposed_ports")(classmethod(lambda cls, v: v if v is None else [
        _check_port(p) for p in v]))

    _workdir = field_validator("workdir")(classmethod(lambda cls, v: _check_workdir(v)))
    _env = field_validator("env")(classmethod(lambda cls, v: v if v is None else _check_env(v)))
    _argv = field_validator("entrypoint", "cmd", "shell")(
        classmethod(lambda cls, v: v if v is None else _check_argv(v)))


class ScratchStep(_Wire):
    """Base: an empty image (``FROM scratch``, ``Image.from_scratch``)."""

    kind: Literal["scratch"] = "scratch"


def _check_port(port: str) -> str:
    if not re.fullmatch(r"[0-9]{1,5}(/(tcp|udp|sctp))?", port) or \
            not 0 < int(port.split("/")[0]) < 65536:
        raise ValueError(f"{port!r} is not a port such as 80 or 53/udp")
    return port if "/" in port else f"{port}/tcp"


BaseStep = Annotated[DebianSlimStep | FromIdStep | FromRegistryStep | FromOCIStep | ScratchStep,
                     Field(discriminator="kind")]
LayerStep = Annotated[RunStep | CopyStep | CopyFromStep | ConfigStep,
                      Field(discriminator="kind")]


class BuildImageRequest(_Wire):
    """Build an image (or find it cached): a base, then steps applied in order.

    The answer is an NDJSON stream: ``{"step": i, "of": n, "description": ...,
    "cached": bool}`` as each step starts, ``{"log": line}`` as it runs, and finally
    ``{"ref": ...}`` or ``{"error": ErrorBody}``.
    """

    base: BaseStep
    steps: list[LayerStep] = Field(default_factory=list, max_length=256)
    force_build: bool = False


class PushImageRequest(_Wire):
    """Push an image of the engine to a registry with skopeo: ``dest`` is a registry
    reference by tag (``127.0.0.1:5000/name:tag``, ``docker.io/me/name:1``; ``docker://``
    optional; plain HTTP for one on loopback).  ``credentials`` (``user:password``) are
    never logged or part of an error.  The answer: ``{"ref", "dest", "digest"}``."""

    ref: str = Field(min_length=1, max_length=512)
    dest: str = Field(min_length=1, max_length=512)
    credentials: str | None = Field(default=None, max_length=4096,
                                    pattern=r"^[^:\x00\n]+:[^\x00\n]*$")


#: A name ``Image.publish`` gives: ``hutch/named/<environment>/<name>:<tag>``.
_NAME_PART = r"[a-z0-9][a-z0-9._-]{0,63}"
NAMED_REF = rf"^hutch/named/{_NAME_PART}/{_NAME_PART}:[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}$"


class TagImageRequest(_Wire):
    """Give an image of the engine a published name (``Image.publish``); the answer is
    ``{"ref": name, "digest": its manifest digest}``."""

    ref: str = Field(min_length=1, max_length=512)
    name: str = Field(pattern=NAMED_REF)
