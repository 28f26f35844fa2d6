"""Debian root filesystems, built with mmdebstrap from Debian's mirror into the image store.

The engine runs inside its own user namespace as its root, with the user's subordinate ids
mapped, so mmdebstrap's ``root`` mode works there unprivileged (it bind-mounts ``/proc``
and ``/sys`` where mounting them is refused).

What goes in is what Modal's ``debian_slim`` has (``python:X.Y-slim`` plus ``apt-get
install gcc gfortran build-essential``): a C, C++ and Fortran toolchain so ``pip_install``
can build packages without wheels, and for Debian's own Python its headers, pip and venv.
pip is made usable (PEP 668) by removing the ``EXTERNALLY-MANAGED`` marker: a sandbox is
its own throw-away system.  The image's reference names a digest of the recipe, so a
changed package list builds a new image instead of reusing an old one.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from hutch.imagebuild.layout import ImageStore

log = logging.getLogger("hutch.imagebuild")

SYSTEM_PACKAGES = [
    "bash", "coreutils", "procps", "ca-certificates", "netbase", "tzdata",
    "build-essential", "gcc", "g++", "gfortran", "libc6-dev", "pkg-config",
]
PYTHON_PACKAGES = ["python3", "python-is-python3", "python3-pip", "python3-venv", "python3-dev"]
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
MIRROR = "http://deb.debian.org/debian"
#: Suites whose Release files mirrors often serve past their Valid-Until date (testing's
#: is valid for a week): apt would refuse them, so the date is not checked for these (the
#: signature still is).
UNDATED_SUITES = ("forky",)


class ImageBuildError(RuntimeError):
    pass


def packages(with_python: bool) -> list[str]:
    return [*SYSTEM_PACKAGES, *(PYTHON_PACKAGES if with_python else [])]


def os_ref(suite: str, with_python: bool) -> str:
    """``hutch/debian:<suite>-<python|nopython>-<recipe digest>``."""
    recipe = hashlib.sha256(" ".join([suite, MIRROR, *packages(with_python)]).encode())
    kind = "python" if with_python else "nopython"
    return f"hutch/debian:{suite}-{kind}-{recipe.hexdigest()[:12]}"


def _no_log(line: str) -> None:
    pass


def build_debian_os(store: ImageStore, suite: str, with_python: bool,
                    log_line: Callable[[str], None] = _no_log, force: bool = False) -> str:
    """Build (or find) Debian ``suite`` with the toolchain (and Debian's Python if
    ``with_python``); returns its ref.  mmdebstrap's output goes to ``log_line`` one line
    at a time as it is produced."""
    ref = os_ref(suite, with_python)
    if store.lookup(ref) and not force:
        return ref
    if shutil.which("mmdebstrap") is None:
        raise ImageBuildError("mmdebstrap is not installed: apt-get install mmdebstrap")
    work = Path(tempfile.mkdtemp(dir=store.tmp, prefix="mmdebstrap-"))
    rootfs = work / "rootfs"
    argv = [
        "mmdebstrap", "--mode=root", "--variant=minbase", "--format=directory",
        "--include=" + ",".join(packages(with_python)),
        *(["--aptopt=Acquire::Check-Valid-Until \"false\""] if suite in UNDATED_SUITES
          else []),
        "--customize-hook=rm -f \"$1\"/usr/lib/python3*/EXTERNALLY-MANAGED",
        "--customize-hook=rm -rf \"$1\"/var/cache/apt/* \"$1\"/var/lib/apt/lists/*",
        suite, str(rootfs), MIRROR,
    ]
    log.info("building %s with mmdebstrap", ref)
    log_line(f"building {ref} from {MIRROR} with mmdebstrap")
    tail: list[str] = []
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail = [*tail[-14:], line]
            log_line(line)
    if proc.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        text = "\n".join(tail)
        raise ImageBuildError(f"mmdebstrap failed with exit code {proc.returncode}:\n{text}")
    layer = store.commit_layer_dir(rootfs)
    shutil.rmtree(work, ignore_errors=True)
    store.write_image(ref, [layer], {
        "Env": [f"{k}={v}" for k, v in BASE_ENV.items()],
        "Cmd": ["/bin/bash"],
        "WorkingDir": "/",
    })
    return ref
