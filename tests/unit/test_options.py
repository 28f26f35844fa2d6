"""hutch.sdk.options: the argument checks of Sandbox.create and exec, with Modal's rules."""

from __future__ import annotations

import re
from typing import Any

import pytest

from hutch.exception import InvalidError
from hutch.sdk import options

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
    assert {"h2_ports", "pty", "outbound_domain_allowlist",
            "inbound_cidr_allowlist"} <= set(options._NOT_YET)
    assert not set(options._NEVER) & set(options._NOT_YET)


@pytest.mark.parametrize("name", UNSUPPORTED)
@pytest.mark.parametrize("value", [object(), "a10g", 1, 1.0, True, ["x"], {"/data": "v"}])
def test_every_unsupported_parameter_is_rejected_by_name(name: str, value: Any) -> None:
    with pytest.raises(InvalidError, match=f"`{re.escape(name)}` is not supported"):
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
    with pytest.raises(InvalidError, match="`pty`"):
        options.reject_unsupported({"idle_timeout": None, "pty": True, "gpu": None})


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
