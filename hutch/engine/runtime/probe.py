"""Choosing the OCI runtime: crun when it really runs a container here, else runc.

The probe runs ``/bin/true`` in a throw-away container over the host's root filesystem,
with the same namespaces a sandbox gets, so it fails exactly where a sandbox would (crun
1.8 refuses hybrid cgroup hosts, for instance).  ``HUTCH_RUNTIME=crun|runc`` forces one;
``HUTCH_CRUN_PATH`` and ``HUTCH_RUNC_PATH`` name other binaries than the ones on PATH.  A
runtime that has not started the probe container within ``PROBE_TIMEOUT`` seconds counts as
not working, so a wedged one cannot keep the engine from starting.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trio

from hutch.engine.runtime import ociconfig
from hutch.engine.runtime.base import OCIRuntime, RuntimeCommandError
from hutch.engine.runtime.crun import CrunRuntime
from hutch.engine.runtime.runc import RuncRuntime

log = logging.getLogger("hutch.runtime")

#: Seconds the probe container may take to be created and started
#: (``HUTCH_RUNTIME_PROBE_TIMEOUT`` overrides it).
PROBE_TIMEOUT = 20.0


def _probe_timeout() -> float:
    try:
        return float(os.environ.get("HUTCH_RUNTIME_PROBE_TIMEOUT", PROBE_TIMEOUT))
    except ValueError:
        return PROBE_TIMEOUT


RUNTIMES: dict[str, type[CrunRuntime] | type[RuncRuntime]] = {
    "crun": CrunRuntime,
    "runc": RuncRuntime,
}


@dataclass
class ProbeResult:
    runtime: OCIRuntime
    fallback_reason: str | None


async def _works(runtime: OCIRuntime, work: Path) -> str | None:
    """None when ``runtime`` runs a container; otherwise why not."""
    if shutil.which(runtime.binary) is None:
        return f"{runtime.binary} is not installed (apt-get install {runtime.binary})"
    bundle = Path(tempfile.mkdtemp(dir=work, prefix=f"probe-{runtime.name}-"))
    rootfs = bundle / "rootfs"
    (rootfs / "usr").mkdir(parents=True)
    for link in ("bin", "lib", "lib64", "sbin"):  # a usr-merged host: the rest is under /usr
        if os.path.islink(f"/{link}"):
            (rootfs / link).symlink_to(os.readlink(f"/{link}"))
    spec = ociconfig.sandbox_spec(
        rootfs=str(rootfs), hostname="probe",
        process=ociconfig.process_spec(["/usr/bin/true"], {"PATH": "/usr/bin"}, "/"),
        etc_files={}, devpts_gid=False,
    )
    spec.mounts.append(ociconfig.Mount(destination="/usr", type="bind", source="/usr",
                                       options=["rbind", "ro"]))
    doc = spec.to_json()
    doc["root"]["readonly"] = True
    (bundle / "config.json").write_text(json.dumps(doc))
    cid = f"hutch-probe-{os.getpid()}"
    null = os.open(os.devnull, os.O_WRONLY)
    deadline = _probe_timeout()
    try:
        with contextlib.suppress(RuntimeCommandError):
            await runtime.delete(cid)
        with trio.fail_after(deadline):  # a wedged runtime must not hold the engine
            await runtime.create(cid, bundle, stdin=None, stdout=null, stderr=null,
                                 pid_file=bundle / "pid")
            await runtime.start(cid)
        return None
    except (RuntimeCommandError, OSError) as exc:
        return str(exc)
    except trio.TooSlowError:
        return f"{runtime.binary} did not start a container within {deadline:g} s"
    finally:
        os.close(null)
        try:
            await runtime.delete(cid)
        except (RuntimeCommandError, OSError):
            pass
        shutil.rmtree(bundle, ignore_errors=True)


async def choose_runtime(state_dir: Path, work: Path) -> ProbeResult:
    forced = os.environ.get("HUTCH_RUNTIME")
    if forced:
        if forced not in RUNTIMES:
            raise ValueError(f"HUTCH_RUNTIME={forced!r}: choose one of {', '.join(RUNTIMES)}")
        return ProbeResult(RUNTIMES[forced](state_dir / forced), None)
    crun = CrunRuntime(state_dir / "crun", os.environ.get("HUTCH_CRUN_PATH"))
    reason = await _works(crun, work)
    if reason is None:
        return ProbeResult(crun, None)
    runc = RuncRuntime(state_dir / "runc", os.environ.get("HUTCH_RUNC_PATH"))
    runc_reason = await _works(runc, work)
    if runc_reason is not None:
        raise RuntimeError(f"no OCI runtime works here: crun: {reason}; runc: {runc_reason}")
    log.warning("crun does not work here, using runc: %s", reason)
    return ProbeResult(runc, f"crun failed: {reason}")
