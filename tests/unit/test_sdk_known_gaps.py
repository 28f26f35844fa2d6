"""The argument checks the SDK lacks (found by test_sdk_args_fuzz.py), one example each.

Each call should raise :class:`~hutch.exception.InvalidError` before sending anything; it
does not yet (it sends what the engine refuses with 422, or raises OverflowError, or builds
a step the engine refuses).  The examples are strict xfails: once the check exists the
example passes, which fails the run, and then the example and its entry in
``sdk_offline.KNOWN_GAPS`` / ``KNOWN_CRASHES`` go.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hutch.exception import InvalidError
from hutch.sdk.image import Image
from hutch.sdk.probe import Probe
from hutch.sdk.sandbox import Sandbox
from hutch.sdk.secret import Secret
from hutch.sdk.volume import Volume
from tests.unit.sdk_offline import a_sandbox, offline_sdk  # noqa: F401 - autouse fixture


def _image() -> Image:
    return Image.debian_slim("3.11")


_vol = Volume("vol", "vo-1")
#: (the entry of KNOWN_GAPS or KNOWN_CRASHES, a call that should raise InvalidError)
GAP_EXAMPLES: list[tuple[str, Callable[[], object]]] = [
    ("create timeout", lambda: Sandbox.create(timeout=86401)),
    ("create timeout", lambda: Sandbox.create(timeout=10**400)),
    ("create idle_timeout", lambda: Sandbox.create(idle_timeout=86401)),
    ("create workdir", lambda: Sandbox.create(workdir="/a\0")),
    ("create entrypoint", lambda: Sandbox.create("a\0")),
    ("create env", lambda: Sandbox.create(env={"1A": "x"})),
    ("create env", lambda: Sandbox.create(env={"A": "\0"})),
    ("create env", lambda: Sandbox.create(secrets=[Secret.from_dict({"A-B": "x"})])),
    ("create cpu", lambda: Sandbox.create(cpu=4097)),
    ("create cpu_limit", lambda: Sandbox.create(cpu=(1, 4097))),
    ("create memory", lambda: Sandbox.create(memory=1 << 25)),
    ("create memory_limit", lambda: Sandbox.create(memory=(1, 5))),
    ("create ephemeral_disk", lambda: Sandbox.create(ephemeral_disk=1 << 25)),
    ("create pids_limit", lambda: Sandbox.create(pids_limit=7)),
    ("create pids_limit", lambda: Sandbox.create(pids_limit=(1 << 22) + 1)),
    ("create unencrypted_ports", lambda: Sandbox.create(unencrypted_ports=[65536])),
    ("create encrypted_ports", lambda: Sandbox.create(encrypted_ports=[443, 443])),
    ("create volumes", lambda: Sandbox.create(volumes={"/": _vol})),
    ("create volumes", lambda: Sandbox.create(volumes={"/a/../b": _vol})),
    ("create readiness_probe",
     lambda: Sandbox.create(readiness_probe=Probe.with_tcp(80, interval_ms=3_600_001))),
    ("create (not JSON)", lambda: Sandbox.create(tags={"\udc00": "x"})),
    ("exec argv", lambda: a_sandbox().exec("a\0")),
    ("exec workdir", lambda: a_sandbox().exec("a", workdir="/\0")),
    ("exec timeout", lambda: a_sandbox().exec("a", timeout=86401)),
    ("exec timeout", lambda: a_sandbox().exec("a", timeout=10**400)),
    ("exec env", lambda: a_sandbox().exec("a", env={"": "x"})),
    ("exec (not JSON)", lambda: a_sandbox().exec("\udc00")),
    ("set_tags (not JSON)", lambda: a_sandbox().set_tags({"a": "\udc00"})),
    ("wait_until_ready", lambda: a_sandbox().wait_until_ready(timeout=10**400)),
    ("image run commands", lambda: _image().run_commands("a\0")),
    ("image run commands", lambda: _image().apt_install("a\0b")),
    ("image run secret_env",
     lambda: _image().run_commands("x", secrets=[Secret.from_dict({"1A": "x"})])),
    ("image config entrypoint", lambda: _image().entrypoint(["a\0"])),
    ("image config cmd", lambda: _image().cmd(["a\0"])),
    ("image (not JSON)", lambda: _image().run_commands("\udc00")),
    ("volume sub_path", lambda: _vol.with_mount_options(sub_path="a\0b")),
    ("volume delete name", lambda: Volume.delete("a/b")),
    ("volume delete name", lambda: Volume.delete(None)),  # type: ignore[arg-type]
]


@pytest.mark.xfail(strict=True, reason="a check the SDK lacks (KNOWN_GAPS): once this "
                   "passes, drop the example and its KNOWN_GAPS/KNOWN_CRASHES entry")
@pytest.mark.parametrize(("gap", "call"), GAP_EXAMPLES, ids=[g for g, _ in GAP_EXAMPLES])
def test_a_known_gap(gap: str, call: Callable[[], object]) -> None:
    with pytest.raises(InvalidError):
        call()
