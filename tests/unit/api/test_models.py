"""hutch.api.models: the wire types reject bad requests with a validation error."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from hutch.api import models
from hutch.api.models import (
    CreateSandboxRequest,
    ErrorBody,
    ExecRequest,
    LookupAppRequest,
    OutputEvent,
    SandboxInfo,
    SetTagsRequest,
    TerminateRequest,
)


def _fails(model: type[Any], field: str | None, **data: Any) -> None:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    if field is not None:
        locs = {e["loc"][0] for e in info.value.errors() if e["loc"]}
        assert field in locs, info.value.errors()


# CreateSandboxRequest --------------------------------------------------------------------

def test_create_defaults() -> None:
    req = CreateSandboxRequest.model_validate({})
    assert req.timeout == models.DEFAULT_SANDBOX_TIMEOUT
    assert req.env == {} and req.tags == {}
    assert req.name is None and req.entrypoint is None and req.workdir is None


def test_create_valid() -> None:
    req = CreateSandboxRequest.model_validate({
        "app_name": "main", "name": "box-1.a_b", "image": "hutch/debian-slim:bookworm-py3.11",
        "entrypoint": ["sleep", "infinity"], "env": {"A_1": "x=y", "_B": ""},
        "workdir": "/srv/app", "timeout": 10, "tags": {"k": "v"},
    })
    assert req.name == "box-1.a_b"
    assert req.timeout == 10.0
    assert req.env == {"A_1": "x=y", "_B": ""}
    assert req.entrypoint == ["sleep", "infinity"]
    assert CreateSandboxRequest.model_validate({"name": "a" * 63}).name == "a" * 63
    assert CreateSandboxRequest.model_validate(
        {"timeout": models.MAX_TIMEOUT}).timeout == models.MAX_TIMEOUT


@pytest.mark.parametrize("timeout", ["10", 0, -1, models.MAX_TIMEOUT + 1, None, True])
def test_create_bad_timeout(timeout: Any) -> None:
    _fails(CreateSandboxRequest, "timeout", timeout=timeout)


@pytest.mark.parametrize("name", [
    "has space", "", "a" * 65, "slash/name", "semi;colon",
    "new\nline", "ünicode",
])
def test_create_bad_name(name: str) -> None:
    _fails(CreateSandboxRequest, "name", name=name)


@pytest.mark.parametrize("env", [
    {"A=B": "x"}, {"A\0": "x"}, {"": "x"}, {"1ABC": "x"}, {"A B": "x"}, {"A": "x\0y"},
    {"A": 1}, ["A=1"],
])
def test_create_bad_env(env: Any) -> None:
    _fails(CreateSandboxRequest, "env", env=env)


@pytest.mark.parametrize("workdir", ["relative/dir", "", "./x", "/a\0b", 5])
def test_create_bad_workdir(workdir: Any) -> None:
    _fails(CreateSandboxRequest, "workdir", workdir=workdir)


@pytest.mark.parametrize("entrypoint", [[], ["a\0b"], "sleep 1", [1]])
def test_create_bad_entrypoint(entrypoint: Any) -> None:
    _fails(CreateSandboxRequest, "entrypoint", entrypoint=entrypoint)


def test_create_bad_tags() -> None:
    _fails(CreateSandboxRequest, "tags", tags={"a": 1})
    _fails(CreateSandboxRequest, "tags", tags=["a"])


def test_trailing_newline_rejected() -> None:
    # BUG (hutch/api/models.py): _NAME and _ENV_KEY end in "$", which also matches before a
    # trailing newline, and are applied with .match(), so the name "box\n" and the environment
    # variable name "A\n" are accepted.  They should be rejected (use \Z or fullmatch).
    _fails(CreateSandboxRequest, "name", name="box\n")
    _fails(CreateSandboxRequest, "env", env={"A\n": "x"})
    _fails(ExecRequest, "env", argv=["true"], env={"A\n": "x"})


def test_create_extra_field_rejected() -> None:
    _fails(CreateSandboxRequest, "gpu", gpu="any")


# ExecRequest -----------------------------------------------------------------------------

def test_exec_valid() -> None:
    req = ExecRequest.model_validate({"argv": ["sh", "-c", "echo $A"], "env": {"A": "1"},
                                      "workdir": "/tmp", "timeout": 2.5, "stdin": True})
    assert req.argv == ["sh", "-c", "echo $A"]
    assert req.timeout == 2.5 and req.stdin is True
    minimal = ExecRequest.model_validate({"argv": ["true"]})
    assert minimal.timeout is None and minimal.stdin is False and minimal.workdir is None


@pytest.mark.parametrize("argv", [[], ["a\0b"], "true", [1], None])
def test_exec_bad_argv(argv: Any) -> None:
    _fails(ExecRequest, "argv", argv=argv)


def test_exec_argv_required() -> None:
    _fails(ExecRequest, "argv")


@pytest.mark.parametrize("timeout", ["10", 0, -0.5, models.MAX_TIMEOUT * 2])
def test_exec_bad_timeout(timeout: Any) -> None:
    _fails(ExecRequest, "timeout", argv=["true"], timeout=timeout)


@pytest.mark.parametrize("env", [{"A=B": "x"}, {"A": "x\0"}, {"NUL\0": "x"}])
def test_exec_bad_env(env: dict[str, str]) -> None:
    _fails(ExecRequest, "env", argv=["true"], env=env)


@pytest.mark.parametrize("workdir", ["tmp", "~/x", ""])
def test_exec_bad_workdir(workdir: str) -> None:
    _fails(ExecRequest, "workdir", argv=["true"], workdir=workdir)


def test_exec_strict_types() -> None:
    _fails(ExecRequest, "stdin", argv=["true"], stdin="yes")
    _fails(ExecRequest, "stdin", argv=["true"], stdin=1)
    _fails(ExecRequest, "extra", argv=["true"], extra=1)


# other models ----------------------------------------------------------------------------

def test_terminate_grace_period() -> None:
    assert TerminateRequest.model_validate({}).grace_period == 3.0
    assert TerminateRequest.model_validate({"grace_period": 0}).grace_period == 0
    _fails(TerminateRequest, "grace_period", grace_period=-1)
    _fails(TerminateRequest, "grace_period", grace_period=61)
    _fails(TerminateRequest, "grace_period", grace_period="1")


def test_set_tags_and_lookup() -> None:
    assert SetTagsRequest.model_validate({"tags": {"a": "b"}}).tags == {"a": "b"}
    _fails(SetTagsRequest, "tags")
    _fails(SetTagsRequest, "tags", tags={"a": None})
    assert LookupAppRequest.model_validate({"name": "x"}).create_if_missing is False
    _fails(LookupAppRequest, "create_if_missing", name="x", create_if_missing="true")
    _fails(LookupAppRequest, "name", name=3)


def test_sandbox_info_literals() -> None:
    base = {"sandbox_id": "sb-1", "app_id": "ap-1", "name": None, "state": "running",
            "image": "i", "created_at": 1.0, "timeout": 5.0, "runtime": "crun"}
    info = SandboxInfo.model_validate(base)
    assert info.exit_reason is None and info.tags == {}
    _fails(SandboxInfo, "state", **{**base, "state": "paused"})
    _fails(SandboxInfo, "exit_reason", **{**base, "exit_reason": "crashed"})
    # round trip through JSON, as the engine and SDK use it
    again = SandboxInfo.model_validate_json(info.model_dump_json())
    assert again == info


def test_error_body_types() -> None:
    for kind in ("not_found", "already_exists", "invalid", "conflict", "engine", "timeout",
                 "image_build"):
        assert ErrorBody.model_validate({"type": kind, "message": "m"}).type == kind
    _fails(ErrorBody, "type", type="teapot", message="m")
    _fails(ErrorBody, "message", type="engine")


def test_output_event() -> None:
    ev = OutputEvent.model_validate({"fd": 1, "data": "aGk="})
    assert ev.exit_code is None
    assert OutputEvent.model_validate({"exit_code": 0}).exit_code == 0
    _fails(OutputEvent, "fd", fd="1")
