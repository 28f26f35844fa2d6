"""hutch.sdk.options: the argument checks of Sandbox.create and exec, with Modal's rules."""

from __future__ import annotations

import math
import re
from pathlib import PurePosixPath
from typing import Any

import pytest
from pydantic import BaseModel

from hutch.api.imagemodels import FromIdStep, FromRegistryStep
from hutch.api.models import (
    MAX_PIDS_LIMIT,
    MAX_TIMEOUT,
    CreateSandboxRequest,
    ExecRequest,
    ProbeSpec,
)
from hutch.exception import InvalidError
from hutch.sdk import options
from hutch.sdk.image import MAX_REF_LENGTH
from hutch.sdk.probe import MAX_INTERVAL_MS

UNSUPPORTED = sorted({*options._NEVER, *options._NOT_YET})
ALLOWLISTS = ["outbound_cidr_allowlist", "outbound_domain_allowlist", "inbound_cidr_allowlist"]
PORTS = ["encrypted_ports", "h2_ports", "unencrypted_ports"]


# check_object_name ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a", "my-name", "My_Name.v2", "0", "-", "._-", "x" * 64])
def test_object_name_accepts_modal_names(name: str) -> None:
    assert options.check_object_name(name, "Sandbox") == name


@pytest.mark.parametrize("name", [
    "", "x" * 65, "has space", "a/b", "a:b", "a@b", "tab\t", "new\nline", "ünïcode", "a^b",
    "a[b]", "a\\b", 5, None, b"bytes",
])
def test_object_name_rejects_others(name: Any) -> None:
    with pytest.raises(InvalidError) as info:
        options.check_object_name(name, "Sandbox")
    message = str(info.value)
    assert message.startswith(f"Invalid Sandbox name: {name!r}.")
    assert "alphanumeric characters, dashes, periods, and underscores" in message


def test_object_name_message_names_the_kind() -> None:
    with pytest.raises(InvalidError, match=r"^Invalid App name: 'a b'"):
        options.check_object_name("a b", "App")


# check_args -------------------------------------------------------------------------------
def test_args_are_returned_as_a_list() -> None:
    assert options.check_args(("echo", "hi"), "exec") == ["echo", "hi"]
    assert options.check_args((), "entrypoint") == []


@pytest.mark.parametrize("args", [(1,), ("echo", None), ("echo", b"hi"), (["echo"],)])
def test_args_must_be_strings(args: tuple[Any, ...]) -> None:
    with pytest.raises(InvalidError, match=r"^All entrypoint arguments must be strings$"):
        options.check_args(args, "entrypoint")
    with pytest.raises(InvalidError, match=r"^All exec arguments must be strings$"):
        options.check_args(args, "exec")


def test_args_total_length_limit() -> None:
    limit = options.ARG_MAX_BYTES
    assert limit == 65536
    assert len(options.check_args(("x" * limit,), "exec")) == 1
    assert len(options.check_args(("x" * (limit // 2),) * 2, "exec")) == 2
    expected = (f"Total length of CMD arguments cannot exceed {limit} bytes (ARG_MAX). "
                f"Got {limit + 1} bytes.")
    with pytest.raises(InvalidError, match=f"^{re.escape(expected)}$"):
        options.check_args(("x" * (limit // 2), "y" * (limit // 2 + 1)), "exec")
    with pytest.raises(InvalidError, match=f"Got {limit + 1} bytes"):
        options.check_args(("x" * (limit + 1),), "entrypoint")


# check_workdir ----------------------------------------------------------------------------
@pytest.mark.parametrize("workdir", [None, "/", "/tmp", "/a/b/../c"])
def test_workdir_absolute_or_none(workdir: str | None) -> None:
    assert options.check_workdir(workdir) == workdir


@pytest.mark.parametrize("workdir", ["tmp", "./tmp", "", "~/x", 5])
def test_workdir_relative_is_invalid(workdir: Any) -> None:
    with pytest.raises(InvalidError,
                       match=f"^{re.escape(f'workdir must be an absolute path, got: {workdir}')}$"):
        options.check_workdir(workdir)


# check_timeout ----------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "expected"), [(1, 1.0), (0.5, 0.5), (300, 300.0)])
def test_timeout_positive_numbers(value: float, expected: float) -> None:
    result = options.check_timeout(value, "timeout", optional=False)
    assert result == expected
    assert isinstance(result, float)


def test_timeout_none_only_when_optional() -> None:
    assert options.check_timeout(None, "timeout", optional=True) is None
    with pytest.raises(InvalidError, match="timeout"):
        options.check_timeout(None, "timeout", optional=False)


@pytest.mark.parametrize("value", [0, -1, -0.5, True, False, "5", [5]])
def test_timeout_rejects_non_positive_and_non_numbers(value: Any) -> None:
    for optional in (True, False):
        with pytest.raises(InvalidError, match=r"^my_timeout must be a positive number"):
            options.check_timeout(value, "my_timeout", optional=optional)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_timeout_rejects_nan_and_infinity(value: float) -> None:
    with pytest.raises(InvalidError):
        options.check_timeout(value, "timeout", optional=True)


# check_sandbox_id -------------------------------------------------------------------------
@pytest.mark.parametrize("sandbox_id", ["sb-" + "a" * 22, "sb-0123456789abcdefABCDEF"])
def test_sandbox_id_valid(sandbox_id: str) -> None:
    assert options.check_sandbox_id(sandbox_id) == sandbox_id


@pytest.mark.parametrize("sandbox_id", [
    "bad", "", "sb-", "sb-" + "a" * 21, "sb-" + "a" * 23, "sb-" + "_" * 22, "sb-" + "-" * 22,
    "xb-" + "a" * 22, "SB-" + "a" * 22, " sb-" + "a" * 22, "sb-" + "a" * 22 + "\n", None, 5,
])
def test_sandbox_id_invalid(sandbox_id: Any) -> None:
    with pytest.raises(InvalidError, match=f"^{re.escape(f'Invalid Sandbox ID: {sandbox_id!r}')}$"):
        options.check_sandbox_id(sandbox_id)


# env_without_none -------------------------------------------------------------------------
def test_env_without_none_drops_none_values() -> None:
    assert options.env_without_none(None) == {}
    assert options.env_without_none({}) == {}
    assert options.env_without_none({"A": "1", "B": None, "C": ""}) == {"A": "1", "C": ""}


def test_env_without_none_returns_a_new_dict() -> None:
    env: dict[str, str | None] = {"A": "1"}
    result = options.env_without_none(env)
    result["B"] = "2"
    assert env == {"A": "1"}


@pytest.mark.parametrize("env", [{"A": 1}, {"A": b"x"}, {1: "a"}, [("A", "1")], "A=1"])
def test_env_without_none_rejects_non_str_dicts(env: Any) -> None:
    with pytest.raises(InvalidError, match="env must be a dict of str to str"):
        options.env_without_none(env)


# reject_unsupported -----------------------------------------------------------------------
def test_the_unsupported_lists_cover_modal_parameters() -> None:
    # Guards the parametrized tests below against an accidentally emptied list.
    assert {"gpu", "cloud", "region", "client", "environment_name", "proxy"} <= set(
        options._NEVER)
    assert {"h2_ports", "outbound_domain_allowlist",
            "inbound_cidr_allowlist"} <= set(options._NOT_YET)
    assert not set(options._NEVER) & set(options._NOT_YET)


@pytest.mark.parametrize("name", UNSUPPORTED)
@pytest.mark.parametrize("value", [object(), "a10g", 1, 1.0, True, ["x"], {"/data": "v"}])
def test_every_unsupported_parameter_is_rejected_by_name(name: str, value: Any) -> None:
    shown = options._SHOWN.get(name, name)  # (gpu_image is an image step's `gpu`)
    with pytest.raises(InvalidError, match=f"`{re.escape(shown)}` is not supported"):
        options.reject_unsupported({name: value})


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_not_yet_and_never_messages_differ(name: str) -> None:
    with pytest.raises(InvalidError) as info:
        options.reject_unsupported({name: object()})
    message = str(info.value)
    if name in options._NOT_YET:
        assert "not implemented yet" in message
        assert options._NOT_YET[name] in message
    else:
        assert options._NEVER[name] in message


@pytest.mark.parametrize("name", [*UNSUPPORTED, "block_network"])
@pytest.mark.parametrize("value", [None, False, [], {}, ()])
def test_unset_values_pass(name: str, value: Any) -> None:
    if name in options._EMPTY_IS_SET and value is not None:
        with pytest.raises(InvalidError, match=name):  # an empty allowlist blocks everything
            options.reject_unsupported({name: value})
        return
    options.reject_unsupported({name: value})


def test_all_unset_together_pass() -> None:
    options.reject_unsupported({name: None for name in UNSUPPORTED} | {"block_network": False})
    options.reject_unsupported({})


def test_block_network_alone_is_accepted() -> None:
    options.reject_unsupported({"block_network": True, "encrypted_ports": [], "h2_ports": (),
                                "unencrypted_ports": [], "gpu": None})


def test_first_unsupported_parameter_is_named() -> None:
    with pytest.raises(InvalidError, match="`h2_ports`"):
        options.reject_unsupported({"idle_timeout": None, "h2_ports": [8000], "gpu": None})


@pytest.mark.parametrize("value", [["10.0.0.0/8"], []])
def test_cidr_allowlist_and_its_new_name_together(value: list[str]) -> None:
    message = "Cannot specify both `cidr_allowlist` and `outbound_cidr_allowlist`."
    with pytest.raises(InvalidError, match=f"^{re.escape(message)}$"):
        options.reject_unsupported({"cidr_allowlist": value, "outbound_cidr_allowlist": value})


@pytest.mark.parametrize("port_option", PORTS)
def test_open_ports_contradict_block_network(port_option: str) -> None:
    message = "Cannot specify open ports when `block_network` is enabled"
    with pytest.raises(InvalidError, match=f"^{re.escape(message)}$"):
        options.reject_unsupported({"block_network": True, port_option: [8080]})
    if port_option in ("unencrypted_ports", "encrypted_ports"):  # supported: forwarded
        options.reject_unsupported({"block_network": False, port_option: [8080]})
        return
    # Without block_network the other ports are simply not supported yet.
    with pytest.raises(InvalidError, match=f"`{port_option}` is not supported"):
        options.reject_unsupported({"block_network": False, port_option: [8080]})


@pytest.mark.parametrize("allowlist", ALLOWLISTS)
@pytest.mark.parametrize("value", [["10.0.0.0/8"], []])
def test_allowlists_contradict_block_network(allowlist: str, value: list[str]) -> None:
    message = f"`{allowlist}` cannot be used when `block_network` is enabled"
    with pytest.raises(InvalidError, match=f"^{re.escape(message)}$"):
        options.reject_unsupported({"block_network": True, allowlist: value})


def test_deprecated_cidr_allowlist_is_reported_under_its_new_name() -> None:
    message = "`outbound_cidr_allowlist` cannot be used when `block_network` is enabled"
    with pytest.raises(InvalidError, match=f"^{re.escape(message)}$"):
        options.reject_unsupported({"block_network": True, "cidr_allowlist": ["10.0.0.0/8"]})


# resources ------------------------------------------------------------------------------
def test_resources_as_modal_takes_them() -> None:
    assert options.check_resources(cpu=None, memory=None, ephemeral_disk=None,
                                   pids_limit=None) == {}
    assert options.check_resources(cpu=0.5, memory=256, ephemeral_disk=None,
                                   pids_limit=None) == {"cpu": 0.5, "memory": 256}
    assert options.check_resources(cpu=(1, 2.5), memory=(128, 512), ephemeral_disk=100,
                                   pids_limit=64) == {
        "cpu": 1.0, "cpu_limit": 2.5, "memory": 128, "memory_limit": 512,
        "ephemeral_disk": 100, "pids_limit": 64}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"cpu": (2, 1)}, "Cannot specify a cpu limit lower than request: 1 < 2"),
    ({"memory": (512, 256)}, "Cannot specify a memory limit lower than request: 256 < 512"),
    ({"memory": 1.5}, "`memory` must be a positive int"),
    ({"memory": (1, 2, 3)}, "`memory` must be a number or a"),
    ({"cpu": -1}, "`cpu` must be a positive float"),
    ({"cpu": float("nan")}, "`cpu` must be a positive float"),
    ({"cpu": True}, "`cpu` must be a positive float"),
    ({"cpu": "2"}, "`cpu` must be a positive float"),
    ({"memory": (0, 10)}, "the `memory` request must be a positive int, got: 0"),
    ({"ephemeral_disk": 0}, "`ephemeral_disk` must be a positive int"),
    ({"pids_limit": 2.0}, "`pids_limit` must be a positive int"),
])
def test_bad_resources(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"cpu": None, "memory": None, "ephemeral_disk": None,
                            "pids_limit": None, **kwargs}
    with pytest.raises(InvalidError, match=re.escape(message)):
        options.check_resources(**args)


# the engine's bounds ----------------------------------------------------------------------
def _bounds(model: type[BaseModel], field: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in model.model_fields[field].metadata:
        for name in ("gt", "ge", "le", "max_length"):
            if getattr(item, name, None) is not None:
                found[name] = getattr(item, name)
    return found


def test_the_bounds_are_the_engines() -> None:
    """The SDK refuses exactly what the engine's models refuse: the same numbers."""
    create = CreateSandboxRequest
    assert _bounds(create, "cpu") == _bounds(create, "cpu_limit") == {
        "gt": 0, "le": options.MAX_CPU}
    assert _bounds(create, "memory") == {"gt": 0, "le": options.MAX_MEMORY_MIB}
    assert _bounds(create, "memory_limit") == {"ge": options.MIN_MEMORY_LIMIT_MIB,
                                               "le": options.MAX_MEMORY_MIB}
    assert _bounds(create, "ephemeral_disk") == {"ge": 1, "le": options.MAX_EPHEMERAL_DISK_MIB}
    assert _bounds(create, "pids_limit") == {"ge": options.MIN_PIDS_LIMIT,
                                             "le": MAX_PIDS_LIMIT}
    assert _bounds(create, "timeout") == _bounds(create, "idle_timeout") == \
        _bounds(ExecRequest, "timeout") == {"gt": 0, "le": MAX_TIMEOUT}
    assert _bounds(create, "unencrypted_ports") == _bounds(create, "encrypted_ports") == {
        "max_length": options.MAX_PORTS}
    assert _bounds(ProbeSpec, "interval_ms") == {"gt": 0, "le": MAX_INTERVAL_MS}
    assert _bounds(FromIdStep, "ref")["max_length"] == MAX_REF_LENGTH
    assert _bounds(FromRegistryStep, "ref")["max_length"] == MAX_REF_LENGTH


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"cpu": 4097}, "`cpu` must be at most 4096 cores, got: 4097"),
    ({"cpu": (1, 4097)}, "the `cpu` limit must be at most 4096 cores"),
    ({"cpu": 10**400}, "`cpu` must be at most 4096 cores, got: 1000"),
    ({"memory": (1 << 24) + 1}, "`memory` must be at most 16777216 MiB"),
    ({"memory": (1, 5)}, "the `memory` limit must be at least 6 MiB, got: 5"),
    ({"ephemeral_disk": (1 << 24) + 1}, "`ephemeral_disk` must be at most 16777216 MiB"),
    ({"ephemeral_disk": 10**5000}, "`ephemeral_disk` must be at most 16777216 MiB, "
                                   "got: a huge integer"),
    ({"pids_limit": 7}, "`pids_limit` must be at least 8 processes, got: 7"),
    ({"pids_limit": MAX_PIDS_LIMIT + 1}, f"`pids_limit` must be at most {MAX_PIDS_LIMIT}"),
], ids=lambda v: options.shown(v) if isinstance(v, dict) else "")
def test_resources_beyond_the_engines_bounds(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"cpu": None, "memory": None, "ephemeral_disk": None,
                            "pids_limit": None, **kwargs}
    with pytest.raises(InvalidError, match=f"^{re.escape(message)}"):
        options.check_resources(**args)


def test_resources_at_the_engines_bounds() -> None:
    assert options.check_resources(cpu=(4096, 4096), memory=(1 << 24, 1 << 24),
                                   ephemeral_disk=1 << 24, pids_limit=MAX_PIDS_LIMIT) == {
        "cpu": 4096.0, "cpu_limit": 4096.0, "memory": 1 << 24, "memory_limit": 1 << 24,
        "ephemeral_disk": 1 << 24, "pids_limit": MAX_PIDS_LIMIT}
    assert options.check_resources(cpu=None, memory=(1, 6), ephemeral_disk=1,
                                   pids_limit=8) == {
        "memory": 1, "memory_limit": 6, "ephemeral_disk": 1, "pids_limit": 8}
    assert isinstance(options.check_resources(cpu=None, memory=(1, 6), ephemeral_disk=None,
                                              pids_limit=None)["memory"], int)


# timeouts -----------------------------------------------------------------------------------
def test_timeout_at_most_a_day() -> None:
    assert options.check_timeout(86400, "timeout", optional=False) == 86400.0
    for value in (86400.5, 86401, 2**64):
        with pytest.raises(InvalidError, match=r"^idle_timeout must be at most 86400 seconds"):
            options.check_timeout(value, "idle_timeout", optional=True)


@pytest.mark.parametrize("value", [10**400, -(10**400), 10**5000],
                         ids=["1e400", "-1e400", "1e5000"])
def test_timeout_too_large_for_a_float(value: int) -> None:
    with pytest.raises(InvalidError, match="timeout must be a positive number of seconds"):
        options.check_timeout(value, "timeout", optional=True)


def test_wait_has_no_upper_bound_but_must_be_a_positive_number() -> None:
    assert options.check_wait(10**6) == 1e6
    assert options.check_wait(math.inf) == math.inf
    for value in (10**400, float("nan"), 0, -1, True, "5", None):
        with pytest.raises(InvalidError, match=r"^`timeout` must be positive"):
            options.check_wait(value)


# text -----------------------------------------------------------------------------------
def test_text_without_nul_and_in_utf8() -> None:
    assert options.check_text("ünïcode ✓", "x") == "ünïcode ✓"
    with pytest.raises(InvalidError, match=r"^the thing contains a NUL byte$"):
        options.check_text("a\0b", "the thing")
    assert options.check_text("a\0b", "a tag", nul=True) == "a\0b"
    for value in ("\udc00", "a\ud800b"):
        with pytest.raises(InvalidError, match=r"^x is not valid UTF-8 text"):
            options.check_text(value, "x", nul=True)


def test_shown_is_short_and_never_fails() -> None:
    assert options.shown("abc") == "'abc'"
    assert options.shown("x" * 100) == "'" + "x" * 56 + "..."
    assert options.shown(10**5000) == "a huge integer"


def test_args_without_nul_or_surrogates() -> None:
    with pytest.raises(InvalidError, match=r"^exec: the argument 'a\\x00' contains a NUL"):
        options.check_args(("ls", "a\0"), "exec")
    with pytest.raises(InvalidError, match=r"^entrypoint: the argument '\\udc00' is not valid"):
        options.check_args(("\udc00",), "entrypoint")


def test_workdir_without_nul_or_surrogates() -> None:
    with pytest.raises(InvalidError, match=r"^workdir contains a NUL byte$"):
        options.check_workdir("/a\0")
    with pytest.raises(InvalidError, match=r"^workdir is not valid UTF-8"):
        options.check_workdir("/\udc80")


def test_str_dicts_in_utf8_but_nul_allowed() -> None:
    assert options.check_str_dict({"a": "\0"}, "tags") == {"a": "\0"}
    with pytest.raises(InvalidError, match=r"^tags: the key '\\udc00' is not valid UTF-8"):
        options.check_str_dict({"\udc00": "x"}, "tags")
    with pytest.raises(InvalidError, match=r"^tags: the value of 'a' is not valid UTF-8"):
        options.check_str_dict({"a": "\udc00"}, "tags")


# env ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["A", "_", "_a1", "PATH", "a_B_9"])
def test_env_names_the_engine_takes(name: str) -> None:
    assert options.check_env({name: "x"}) == {name: "x"}


@pytest.mark.parametrize("name", ["", "1A", "A-B", "A B", "A=B", "Ä", "A\0", "\udc00"])
def test_env_names_the_engine_refuses(name: str) -> None:
    with pytest.raises(InvalidError, match=r"^env: .* (is not a valid environment variable "
                                           r"name|is not valid UTF-8)"):
        options.env_without_none({name: "x"})


def test_env_values_without_nul_and_never_shown() -> None:
    with pytest.raises(InvalidError, match=r"^env: the value of A contains a NUL byte$"):
        options.env_without_none({"A": "sec\0ret"})
    with pytest.raises(InvalidError) as info:
        options.check_env({"A": "secret\udc00"}, "env")
    assert "secret" not in str(info.value)


# ports and mount paths ------------------------------------------------------------------
def test_ports_as_the_engine_takes_them() -> None:
    assert options.check_ports(None, "encrypted_ports") == []
    assert options.check_ports((1, 65535), "encrypted_ports") == [1, 65535]
    assert options.check_ports(iter([80]), "unencrypted_ports") == [80]
    assert len(options.check_ports(range(1, 65), "unencrypted_ports")) == 64


@pytest.mark.parametrize(("ports", "message"), [
    ([0], "`unencrypted_ports`: 0 is not a port number (1-65535)"),
    ([65536], "`unencrypted_ports`: 65536 is not a port number (1-65535)"),
    ([443, 443], "`unencrypted_ports` lists a port more than once: [443, 443]"),
    (range(1, 66), "`unencrypted_ports` may list at most 64 ports"),
    ([True], "`unencrypted_ports` must be a list of port numbers"),
    ([80.0], "`unencrypted_ports` must be a list of port numbers"),
    ("80", "`unencrypted_ports` must be a list of port numbers"),
    ({80: 1}, "`unencrypted_ports` must be a list of port numbers"),
    (80, "`unencrypted_ports` must be a list of port numbers"),
])
def test_ports_the_engine_refuses(ports: Any, message: str) -> None:
    with pytest.raises(InvalidError, match=f"^{re.escape(message)}$"):
        options.check_ports(ports, "unencrypted_ports")


@pytest.mark.parametrize("path", ["/data", "/a/b/", "//x", PurePosixPath("/mnt/v")])
def test_mount_paths_the_engine_takes(path: Any) -> None:
    assert options.check_mount_path(path) == str(path)


@pytest.mark.parametrize("path", ["/", "//", "data", "", "/a/../b", "/..", "/x\0",
                                  "/\udc00", b"/data", 5, None])
def test_mount_paths_the_engine_refuses(path: Any) -> None:
    with pytest.raises(InvalidError, match=r"^`volumes`: the mount path"):
        options.check_mount_path(path)



# listing_bounds (Modal's objects.list) -----------------------------------------------------
def test_listing_bounds_take_modals_forms() -> None:
    import datetime

    assert options.listing_bounds(None, None) is None
    assert options.listing_bounds(3, "2025-01-01") == datetime.datetime(
        2025, 1, 1, tzinfo=datetime.UTC).timestamp()
    aware = datetime.datetime(2025, 1, 1, 2, tzinfo=datetime.timezone(
        datetime.timedelta(hours=2)))
    assert options.listing_bounds(None, aware) == options.listing_bounds(None, "2025-01-01")
    for bad_max, bad_before in ((-1, None), (True, None), ("3", None), (None, "yesterday"),
                                (None, 17)):
        with pytest.raises(InvalidError):
            options.listing_bounds(bad_max, bad_before)
