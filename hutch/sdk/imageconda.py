"""``Image.micromamba`` and ``micromamba_install``: conda packages, as Modal's.

Modal starts from Docker Hub's ``mambaorg/micromamba`` image; hutch starts from its own
Debian base (no Python: conda brings it) and installs micromamba's static binary from
``micro.mamba.pm`` into ``/usr/local/bin`` with a root prefix at ``/opt/conda`` (first on
``PATH``), then ``micromamba install -n base python=X pip -c conda-forge`` as Modal does.

Conda channels are servers of their own (conda-forge at ``conda.anaconda.org``).  Each
step first checks, from the build container, that every channel it names answers, so a
machine that cannot reach them gets an :class:`~hutch.exception.ImageBuildError` naming
the channel and the reason, rather than micromamba's retries and a solver message.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from hutch.exception import InvalidError
from hutch.sdk import imagebases, imagesteps
from hutch.sdk.imagecore import ImageCore
from hutch.sdk.options import env_without_none, reject_unsupported
from hutch.sdk.secret import Secret

MAMBA_ROOT = "/opt/conda"
MICROMAMBA_URL = "https://micro.mamba.pm/api/micromamba/linux-{arch}/latest"
CHANNEL_URL = "https://conda.anaconda.org/{channel}"
#: Checks that a URL answers, with the image's Python (run in the build container).
_REACHABLE = ("python3 -c 'import sys, urllib.request as u\n"
              "for url in sys.argv[1:]:\n"
              "    try: u.urlopen(url, timeout=30).close()\n"
              "    except Exception as e: sys.exit(f\"micromamba: {{url}} cannot be reached "
              "from this machine ({{e}}); conda channels must be reachable to install "
              "packages\")' {urls}")


def _channel_url(channel: str) -> str:
    if channel.startswith(("https://", "http://", "file://")):
        return channel.rstrip("/") + "/noarch/repodata.json"
    return CHANNEL_URL.format(channel=channel) + "/noarch/repodata.json"


def _reachable(urls: list[str]) -> str:
    return _REACHABLE.format(urls=" ".join(shlex.quote(u) for u in urls))


class CondaSteps(ImageCore):
    """The conda part of ``Image``."""

    @classmethod
    def micromamba(cls, python_version: str | None = None, force_build: bool = False) -> Self:
        """micromamba with conda-forge's Python ``python_version`` (``X.Y``; default: this
        interpreter's series) in its base environment, first on ``PATH``."""
        version = imagebases.debian_slim(python_version)["python_version"]
        if version.count(".") != 1:
            raise InvalidError("Image.micromamba takes a Python series such as '3.12'")
        arch = "aarch64" if imagebases.machine() == "aarch64" else "64"
        url = MICROMAMBA_URL.format(arch=arch)
        fetch = ("python3 -c 'import io, sys, tarfile, urllib.request as u\n"
                 "data = u.urlopen(sys.argv[1], timeout=120).read()\n"
                 "t = tarfile.open(fileobj=io.BytesIO(data))\n"
                 "f = t.extractfile(\"bin/micromamba\")\n"
                 "open(\"/usr/local/bin/micromamba\", \"wb\").write(f.read())' "
                 f"{shlex.quote(url)} && chmod 755 /usr/local/bin/micromamba")
        install = (f"micromamba install -r {MAMBA_ROOT} -n base -y python={version} pip "
                   "-c conda-forge && micromamba clean -r " + MAMBA_ROOT + " -a -y")
        # the default image's base (its Python only fetches micromamba; conda brings its own)
        image = cls(imagebases.debian_slim("3.11"), force_build=bool(force_build))
        setup = imagesteps.run_commands(
            [_reachable([url, _channel_url("conda-forge")]), fetch, install],
            {"MAMBA_ROOT_PREFIX": MAMBA_ROOT}, (), False)
        setup["description"] = f"micromamba python={version}"
        return image._then(imagesteps.config(env={
            "MAMBA_ROOT_PREFIX": MAMBA_ROOT, "MAMBA_DOCKERFILE_ACTIVATE": "1",
            "PATH": f"{MAMBA_ROOT}/bin:$PATH"}))._then(setup)

    def micromamba_install(self, *packages: str | list[str], spec_file: str | None = None,
                           channels: list[str] | None = None, force_build: bool = False,
                           env: dict[str, str | None] | None = None,
                           secrets: Sequence[Secret] | None = None,
                           gpu: str | None = None) -> Self:
        """``micromamba install`` of ``packages`` (and/or a local ``spec_file``) from
        ``channels`` into the base environment of a :meth:`micromamba` image."""
        reject_unsupported({"gpu_image": gpu}, "Image.micromamba_install")
        names = imagesteps.flatten_text(packages, "micromamba_install")
        if not names and spec_file is None:
            raise InvalidError("micromamba_install needs packages or a spec_file")
        if channels is not None and (not isinstance(channels, list) or not all(
                isinstance(c, str) and c and not c.startswith("-") for c in channels)):
            raise InvalidError("channels must be a list of channel names or URLs")
        args = ["micromamba", "install", "-n", "base", "-y", *names]
        image = self
        if spec_file is not None:
            local = Path(spec_file).expanduser()
            if not local.is_file():
                raise InvalidError(f"micromamba_install: spec file {spec_file!r} not found")
            remote = f"/.hutch/{local.name}"
            image = image._image().add_local_file(local, remote, copy=True)
            args += ["-f", remote]
        for channel in channels or []:
            args += ["-c", channel]
        commands = [shlex.join(args)]
        if channels:
            commands.insert(0, _reachable([_channel_url(c) for c in channels]))
        step = imagesteps.run_commands(
            commands, env_without_none(env or {}),
            list(secrets or ()), force_build)
        step["description"] = f"micromamba_install {' '.join(names) or spec_file}"
        return image._then(step)
