"""The SDK's calls refused before anything is sent, as the engine would refuse them.

Each of these once sent what the engine refuses (422), or raised OverflowError or
UnicodeEncodeError, until test_args_fuzz.py found it; the checks are in
:mod:`hutch.sdk.options` (unit-tested in test_options.py) and where each call takes its
arguments.  No engine runs (:mod:`tests.unit.sdk.offline`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from hutch.api.models import CreateSandboxRequest, ExecRequest
from hutch.exception import InvalidError
from hutch.sdk.image import Image
from hutch.sdk.probe import Probe
from hutch.sdk.sandbox import Sandbox
from hutch.sdk.secret import Secret
from hutch.sdk.volume import Volume
from tests.unit.sdk.offline import RequestSent, a_sandbox, offline_sdk  # noqa: F401 - autouse


def _image() -> Image:
    return Image.debian_slim("3.11")


_vol = Volume("vol", "vo-1")
#: Calls that once sent what the engine refuses (422) or raised OverflowError or
#: UnicodeEncodeError (found by test_args_fuzz.py), and the message each raises now.
REFUSED_CALLS: list[tuple[str, Callable[[], object]]] = [
    ("^timeout must be at most 86400", lambda: Sandbox.create(timeout=86401)),
    ("^timeout must be a positive number", lambda: Sandbox.create(timeout=10**400)),
    ("^idle_timeout must be at most", lambda: Sandbox.create(idle_timeout=86401)),
    ("^workdir contains a NUL", lambda: Sandbox.create(workdir="/a\0")),
    ("^entrypoint: the argument", lambda: Sandbox.create("a\0")),
    ("^env: '1A' is not a valid", lambda: Sandbox.create(env={"1A": "x"})),
    ("^env: the value of A", lambda: Sandbox.create(env={"A": "\0"})),
    ("^secrets: Secret\\(from_dict, keys=\\['A-B'\\]\\): 'A-B' is not a valid",
     lambda: Sandbox.create(secrets=[Secret.from_dict({"A-B": "x"})])),
    ("^secrets: .* the value of A contains a NUL",
     lambda: Sandbox.create(secrets=[Secret.from_dict({"A": "\0"})])),
    ("^`cpu` must be at most", lambda: Sandbox.create(cpu=4097)),
    ("^the `cpu` limit must be at most", lambda: Sandbox.create(cpu=(1, 4097))),
    ("^`memory` must be at most", lambda: Sandbox.create(memory=1 << 25)),
    ("^the `memory` limit must be at least 6", lambda: Sandbox.create(memory=(1, 5))),
    ("^`ephemeral_disk` must be at most", lambda: Sandbox.create(ephemeral_disk=1 << 25)),
    ("^`pids_limit` must be at least 8", lambda: Sandbox.create(pids_limit=7)),
    ("^`pids_limit` must be at most", lambda: Sandbox.create(pids_limit=(1 << 22) + 1)),
    ("^`unencrypted_ports`: 65536", lambda: Sandbox.create(unencrypted_ports=[65536])),
    ("^`encrypted_ports` lists a port more than once",
     lambda: Sandbox.create(encrypted_ports=[443, 443])),
    ("^`volumes`: the mount path '/'", lambda: Sandbox.create(volumes={"/": _vol})),
    ("^`volumes`: the mount path", lambda: Sandbox.create(volumes={"/a/../b": _vol})),
    ("^sub_path 'a\\\\x00b' contains a NUL", lambda: Sandbox.create(
        volumes={"/data": Volume("vol", "vo-1", sub_path="a\0b")})),
    ("^Invalid Volume name", lambda: Sandbox.create(volumes={"/data": Volume("a/b", "v")})),
    ("^`outbound_cidr_allowlist`: .* is not valid UTF-8",
     lambda: Sandbox.create(outbound_cidr_allowlist=["\udc00"])),
    ("^Probe.with_tcp\\(\\) expects `interval_ms` <= 3600000",
     lambda: Sandbox.create(readiness_probe=Probe.with_tcp(80, interval_ms=3_600_001))),
    ("^Probe.with_exec\\(\\): the argument 'a\\\\x00' contains a NUL",
     lambda: Probe.with_exec("a\0")),
    ("^tags: the key '\\\\udc00' is not valid UTF-8",
     lambda: Sandbox.create(tags={"\udc00": "x"})),
    ("^exec: the argument 'a\\\\x00' contains a NUL", lambda: a_sandbox().exec("a\0")),
    ("^workdir contains a NUL", lambda: a_sandbox().exec("a", workdir="/\0")),
    ("^timeout must be at most", lambda: a_sandbox().exec("a", timeout=86401)),
    ("^timeout must be a positive", lambda: a_sandbox().exec("a", timeout=10**400)),
    ("^env: '' is not a valid", lambda: a_sandbox().exec("a", env={"": "x"})),
    ("^secrets: .* 'A-B' is not a valid",
     lambda: a_sandbox().exec("a", secrets=[Secret.from_dict({"A-B": "x"})])),
    ("^exec: the argument '\\\\udc00' is not valid UTF-8", lambda: a_sandbox().exec("\udc00")),
    ("^tags: the value of 'a' is not valid", lambda: a_sandbox().set_tags({"a": "\udc00"})),
    ("^`timeout` must be positive", lambda: a_sandbox().wait_until_ready(timeout=10**400)),
    ("^`timeout` must be positive",
     lambda: a_sandbox().wait_until_ready(timeout=float("nan"))),
    ("^run_commands: 'a\\\\x00' contains a NUL", lambda: _image().run_commands("a\0")),
    ("^apt_install: 'a\\\\x00b' contains a NUL", lambda: _image().apt_install("a\0b")),
    ("^extra_options contains a NUL", lambda: _image().pip_install("x", extra_options="a\0")),
    ("^index_url is not valid UTF-8", lambda: _image().pip_install("x", index_url="\udc00")),
    ("^secrets: .* '1A' is not a valid",
     lambda: _image().run_commands("x", secrets=[Secret.from_dict({"1A": "x"})])),
    ("^entrypoint: 'a\\\\x00' contains a NUL", lambda: _image().entrypoint(["a\0"])),
    ("^cmd: 'a\\\\x00' contains a NUL", lambda: _image().cmd(["a\0"])),
    ("^workdir: the remote path '/\\\\udc00' is not valid",
     lambda: _image().workdir("/\udc00")),
    ("^run_commands: '\\\\udc00' is not valid UTF-8", lambda: _image().run_commands("\udc00")),
    ("^from_registry: 'a\\\\x00' contains a NUL", lambda: Image.from_registry("a\0")),
    ("^Image.from_id needs an image id of at most 512", lambda: Image.from_id("a" * 513)),
    ("^sub_path 'a\\\\x00b' contains a NUL", lambda: _vol.with_mount_options(sub_path="a\0b")),
    ("^Invalid Volume name: 'a/b'", lambda: Volume.delete("a/b")),
    ("^Invalid Volume name: None", lambda: Volume.delete(None)),  # type: ignore[arg-type]
    ("^path '/\\\\x00' contains a NUL", lambda: _vol.listdir("/\0")),
    ("^path must be a non-empty string", lambda: _vol.remove_file("")),
    ("^src_paths: the path '\\\\udc00' is not valid",
     lambda: _vol.copy_files(["\udc00"], "/x")),
    # Modal's keywords for what hutch cannot honour: refused by name, never a TypeError
    ("^Sandbox.create: `runtime` is not supported", lambda: Sandbox.create(runtime="gvisor")),
    ("^Sandbox.from_id: `client` is not supported",
     lambda: Sandbox.from_id("sb-" + "a" * 22, client=object())),
    ("^Sandbox.from_name: `environment_name` is not supported",
     lambda: Sandbox.from_name("app", "sb", environment_name="prod")),
    ("^Image.pip_install: `gpu` is not supported", lambda: _image().pip_install("x", gpu="T4")),
    ("^Image.run_commands: `volumes` is not supported",
     lambda: _image().run_commands("x", volumes={"/data": _vol})),
    ("^uv_version must be a version", lambda: _image().uv_pip_install("x", uv_version="1; rm")),
    ("^Volume.from_name: `create_options` is not supported",
     lambda: Volume.from_name("v", create_options={"x": 1})),
    ("^Volume.ephemeral: `version` is not supported",
     lambda: Volume.ephemeral(version=2).__enter__()),
    ("^Secret.from_dotenv: `client` is not supported",
     lambda: Secret.from_dotenv(client=object())),
]


@pytest.mark.parametrize(("message", "call"), REFUSED_CALLS,
                         ids=[str(i) for i in range(len(REFUSED_CALLS))])
def test_calls_refused_before_sending(message: str, call: Callable[[], object]) -> None:
    with pytest.raises(InvalidError, match=message):
        call()


def test_calls_at_the_bounds_are_sent() -> None:
    def sent(call: Callable[[], object]) -> Any:
        with pytest.raises(RequestSent) as info:
            call()
        return info.value.body

    body = sent(lambda: Sandbox.create(
        "a", timeout=86400.0, idle_timeout=86400, cpu=(0.5, 4096), memory=(1, 6),
        ephemeral_disk=1 << 24, pids_limit=8, tags={"ü": "\0"}, env={"_A1": "ü"},
        unencrypted_ports=[1, 65535], encrypted_ports=[1],
        volumes={"/data/": _vol.with_mount_options(sub_path="/")},
        readiness_probe=Probe.with_tcp(80, interval_ms=3_600_000)))
    assert body["timeout"] == body["idle_timeout"] == 86400.0
    assert body["volumes"] == {"/data/": {"name": "vol", "read_only": False, "sub_path": "/"}}
    CreateSandboxRequest.model_validate(body)
    body = sent(lambda: a_sandbox().exec("a", timeout=86400, env={"A": None, "B": "x"}))
    ExecRequest.model_validate(body)
    assert body["env"] == {"B": "x"}
    with pytest.raises(RequestSent):
        Volume.delete("vol")
