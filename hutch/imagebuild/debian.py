"""The Debian base image, built with mmdebstrap from Debian's mirror into the image store.

The engine runs inside its own user namespace as its root, with the user's subordinate ids
mapped, so mmdebstrap's ``root`` mode works there unprivileged (it bind-mounts ``/proc``
and ``/sys`` where mounting them is refused).  pip is made usable (PEP 668) by removing the
``EXTERNALLY-MANAGED`` marker: a sandbox is its own throw-away system.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from hutch.api.models import DEBIAN_PYTHON_SUITES
from hutch.imagebuild.layout import ImageStore

log = logging.getLogger("hutch.imagebuild")

#: Python version -> Debian suite.
SUITES = DEBIAN_PYTHON_SUITES
DEFAULT_PYTHON = "3.11"
BASE_PACKAGES = [
    "python3", "python-is-python3", "python3-pip", "python3-venv", "bash", "coreutils",
    "procps", "ca-certificates",
]
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
MIRROR = "http://deb.debian.org/debian"


class ImageBuildError(RuntimeError):
    pass


def base_ref(python_version: str = DEFAULT_PYTHON) -> str:
    return f"hutch/debian-slim:{SUITES[python_version]}-py{python_version}"


def _no_log(line: str) -> None:
    pass


def build_debian_base(store: ImageStore, python_version: str = DEFAULT_PYTHON,
                      log_line: Callable[[str], None] = _no_log, force: bool = False) -> str:
    """Build (or find) the base image for ``python_version``; returns its ref.

    mmdebstrap's output goes to ``log_line`` one line at a time as it is produced.
    """
    if python_version not in SUITES:
        supported = ", ".join(sorted(SUITES))
        raise ImageBuildError(
            f"Python {python_version} has no Debian base; supported versions: {supported}"
        )
    ref = base_ref(python_version)
    if store.lookup(ref) and not force:
        return ref
    if shutil.which("mmdebstrap") is None:
        raise ImageBuildError("mmdebstrap is not installed: apt-get install mmdebstrap")
    work = Path(tempfile.mkdtemp(dir=store.tmp, prefix="mmdebstrap-"))
    rootfs = work / "rootfs"
    argv = [
        "mmdebstrap", "--mode=root", "--variant=minbase", "--format=directory",
        "--include=" + ",".join(BASE_PACKAGES),
        "--customize-hook=rm -f \"$1\"/usr/lib/python3*/EXTERNALLY-MANAGED",
        "--customize-hook=rm -rf \"$1\"/var/cache/apt/* \"$1\"/var/lib/apt/lists/*",
        SUITES[python_version], str(rootfs), MIRROR,
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
