"""The SDK's argument checks, fuzzed with hypothesis: a bad argument is refused before
anything is sent, and whatever is sent is something the engine accepts.

No engine runs: :class:`~hutch.sdk.transport.EngineClient` is replaced by one that raises
:class:`RequestSent` with the request instead of sending it (and the SDK is pointed at a
runtime directory with no socket, so nothing could start one).  Each property calls a
public SDK method with arbitrary values of wrong types and out-of-range values mixed with
plausible ones, and holds when the call either

* raises :class:`~hutch.exception.InvalidError` (or ``TypeError``, as Modal does for some
  wrong types) before any request, or
* sends a request whose body the engine's own wire model validates (so the engine will not
  answer 422) and that httpx can encode (no NaN, no lone surrogate).

Anything else (an ``OverflowError`` escaping, a body the engine refuses) is a bug in the
SDK's checks; and a call whose arguments are all valid must send its request (the calls
the fuzzer once found slipping through are pinned in test_refused_calls.py).
Bounded: a fixed seed, 120 examples a property, a few seconds in all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hutch.api.imagemodels import BuildImageRequest
from hutch.api.models import (
    CreateSandboxRequest,
    ExecRequest,
    LookupAppRequest,
    LookupVolumeRequest,
    SetTagsRequest,
    TerminateRequest,
)
from hutch.exception import InvalidError
from hutch.sdk.image import Image
from hutch.sdk.probe import Probe
from hutch.sdk.sandbox import Sandbox
from hutch.sdk.secret import Secret
from hutch.sdk.volume import Volume
from tests.unit.sdk.offline import (
    SANDBOX_ID,
    a_sandbox,
    check,
    offline_sdk,  # noqa: F401 - the autouse fixture
    outcome,
)

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


# Values ------------------------------------------------------------------------------------
#: Integers no float holds (10**100 and beyond) and ones past a C long.
_huge = st.sampled_from([1, -1]).flatmap(
    lambda sign: st.sampled_from([2**63, 2**64, 10**100, 10**400]).map(lambda n: sign * n))
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), _huge,
    st.floats(), st.text(max_size=12), st.binary(max_size=4),
    st.sampled_from(["", "/", "/tmp", "\0", "/a\0b", "a b", "-x", "..", "/..", "sb-1"]),
)
#: Anything at all: scalars and small containers of them.
wild = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.tuples(inner, inner),
    st.dictionaries(st.text(max_size=6), inner, max_size=3)), max_leaves=6)
#: Numbers of the right type, around and beyond every limit (the engine's included).
numbers = st.one_of(
    st.integers(-5, 10**7), st.floats(-10, 1e7), st.floats(), _huge,
    st.sampled_from([0, -0.0, 5, 6, 7, 8, 4096, 4097, 86400, 86400.5, 3600.5, 65536,
                     1 << 22, (1 << 22) + 1, 1 << 24, (1 << 24) + 1]))
_ints = st.one_of(st.integers(-2, 70_000), st.sampled_from([0, 65535, 65536]))
ports = st.one_of(wild, st.lists(_ints, max_size=4), st.lists(_ints | wild, max_size=3))
_nul_text = st.text(st.sampled_from("a/.\0 -\udc00"), max_size=5)
#: Strings of the right type with what the engine refuses in them: NUL bytes, lone
#: surrogates (not UTF-8), spaces, dots.
texts = st.one_of(st.text(max_size=8), _nul_text)
env_like = st.one_of(wild, st.dictionaries(
    st.one_of(st.sampled_from(["A", "_B1", "1A", "A-B", "", "A\0"]), texts),
    st.one_of(texts, st.none()), max_size=3))
_path_strings = st.one_of(texts, texts.map(lambda t: "/" + t), st.sampled_from(
    ["/", "/data", "/a/../b", "/x\0", "rel", "//", "", "/proc/.."]))
paths = st.one_of(wild, _path_strings)


@st.composite
def one_faulty(draw: st.DrawFn, valid: dict[str, st.SearchStrategy[Any]],
               faulty: dict[str, st.SearchStrategy[Any]]
               ) -> tuple[dict[str, Any], str | None]:
    """Keyword arguments: some valid ones, and (mostly) one drawn from ``faulty``, so
    that a refusal is that argument's and a check it lacks is not hidden by another;
    with the name of the faulty one (None: all are valid)."""
    names = draw(st.lists(st.sampled_from(sorted(valid)), unique=True, max_size=5))
    kwargs = {name: draw(valid[name]) for name in names}
    target = None
    if draw(st.integers(0, 4)):
        target = draw(st.sampled_from(sorted(faulty)))
        kwargs[target] = draw(faulty[target])
    return kwargs, target


_env_name = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True)
_safe_text = st.text(st.characters(exclude_characters="\0", codec="utf-8"), max_size=6)
_env = st.dictionaries(_env_name, _safe_text, max_size=2)
_volume = Volume("vol", "vo-1")


@st.composite
def volumes(draw: st.DrawFn) -> Any:
    if draw(st.booleans()):
        return draw(wild)
    sub_path = draw(st.one_of(st.none(), st.sampled_from(["a", "a/b", "/", "", "a\0b"])))
    volume = Volume("vol", "vo-1", sub_path=sub_path)
    return draw(st.dictionaries(_path_strings, st.one_of(st.just(volume), wild), max_size=2))


@st.composite
def probes(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["tcp", "exec", "wild"]))
    try:
        if kind == "tcp":
            return Probe.with_tcp(draw(st.one_of(st.integers(-1, 70_000), wild)),
                                  interval_ms=draw(st.one_of(st.just(100), numbers, wild)))
        if kind == "exec":
            return Probe.with_exec(*draw(st.lists(st.one_of(st.text(max_size=4), wild),
                                                  max_size=3)),
                                   interval_ms=draw(st.one_of(st.just(100), numbers)))
    except (InvalidError, TypeError):
        return None
    return draw(wild)


@st.composite
def secrets(draw: st.DrawFn) -> Any:
    if draw(st.booleans()):
        return draw(wild)
    found = []
    for env in draw(st.lists(env_like, max_size=2)):
        try:
            found.append(Secret.from_dict(env))
        except (InvalidError, TypeError):
            found.append(env)
    return found


def _request_and_limit(low: float, high: float, integer: bool
                       ) -> st.SearchStrategy[Any]:
    one = st.integers(int(low), int(high)) if integer else st.floats(low, high)
    return st.one_of(one, st.tuples(one, one).map(lambda pair: tuple(sorted(pair))))


# Sandbox.create ---------------------------------------------------------------------------
CREATE_VALID: dict[str, st.SearchStrategy[Any]] = {
    "timeout": st.floats(1, 3600) | st.integers(1, 3600),
    "idle_timeout": st.floats(1, 3600) | st.integers(1, 3600),
    "workdir": st.sampled_from(["/", "/tmp", "/root/x"]),
    "name": st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True),
    "tags": st.dictionaries(_safe_text, _safe_text, max_size=2), "env": _env,
    "secrets": st.lists(_env.map(Secret.from_dict), max_size=2),
    "verbose": st.booleans(), "cpu": _request_and_limit(0.125, 16, False),
    "memory": _request_and_limit(16, 4096, True), "ephemeral_disk": st.integers(1, 10**5),
    "pids_limit": st.integers(8, 10**5),
    "unencrypted_ports": st.lists(st.integers(1, 65535), unique=True, max_size=3),
    "encrypted_ports": st.lists(st.integers(1, 65535), unique=True, max_size=3),
    "outbound_cidr_allowlist": st.lists(st.sampled_from(["1.2.3.0/24", "8.8.8.8/32"]),
                                        max_size=2),
    "volumes": st.just({"/data": _volume}),
    "readiness_probe": st.sampled_from([Probe.with_tcp(8080), Probe.with_exec("true")]),
}
CREATE_FAULTY: dict[str, st.SearchStrategy[Any]] = {
    "timeout": numbers | wild, "idle_timeout": numbers | wild, "workdir": paths,
    "name": st.one_of(wild, texts, st.sampled_from(["a" * 65, "a/b", "", "a b"])),
    "tags": env_like, "env": env_like, "secrets": secrets(), "block_network": wild,
    "verbose": wild,
    "cpu": st.one_of(numbers, st.tuples(numbers, numbers), wild),
    "memory": st.one_of(numbers, st.tuples(numbers, numbers), wild),
    "ephemeral_disk": numbers | wild, "pids_limit": numbers | wild,
    "encrypted_ports": ports, "unencrypted_ports": ports,
    "outbound_cidr_allowlist": st.one_of(wild, st.lists(wild, max_size=2)),
    "volumes": volumes(), "readiness_probe": probes(),
    "app": wild.filter(lambda v: v is not None), "image": wild.filter(lambda v: v is not None),
}
_args = st.lists(_safe_text, max_size=3)
_faulty_args = st.lists(st.one_of(texts, wild), max_size=3)


@FUZZ
@given(valid_args=st.booleans(), data=st.data(),
       arguments=one_faulty(CREATE_VALID, CREATE_FAULTY))
def test_sandbox_create_refuses_or_sends_what_the_engine_takes(
        valid_args: bool, data: st.DataObject,
        arguments: tuple[dict[str, Any], str | None]) -> None:
    args = data.draw(_args if valid_args else _faulty_args)
    kwargs, faulty = arguments
    sent = outcome(lambda: Sandbox.create(*args, **kwargs), "Sandbox.create")
    if sent is None:
        assert faulty is not None or not valid_args, "valid arguments were refused"
        return
    assert (sent.method, sent.path) == ("POST", "/v1/sandboxes")
    check("Sandbox.create", CreateSandboxRequest, sent.body)


# Sandbox.exec and the other sandbox methods -----------------------------------------------
EXEC_VALID: dict[str, st.SearchStrategy[Any]] = {
    "timeout": st.floats(1, 3600) | st.none(), "workdir": st.sampled_from(["/", "/tmp"]),
    "env": _env, "secrets": st.lists(_env.map(Secret.from_dict), max_size=2),
    "text": st.booleans(), "bufsize": st.just(-1),
}
EXEC_FAULTY: dict[str, st.SearchStrategy[Any]] = {
    "timeout": numbers | wild, "workdir": paths, "env": env_like, "secrets": secrets(),
    "text": wild, "bufsize": wild, "stdout": wild, "stderr": wild, "pty": wild,
}


@FUZZ
@given(valid_args=st.booleans(), data=st.data(),
       arguments=one_faulty(EXEC_VALID, EXEC_FAULTY))
def test_exec_refuses_or_sends_what_the_engine_takes(
        valid_args: bool, data: st.DataObject,
        arguments: tuple[dict[str, Any], str | None]) -> None:
    args = data.draw(st.lists(_safe_text, min_size=1, max_size=3) if valid_args
                     else _faulty_args)
    kwargs, faulty = arguments
    sent = outcome(lambda: a_sandbox().exec(*args, **kwargs), "Sandbox.exec")
    if sent is None:
        assert faulty is not None or not valid_args, "valid arguments were refused"
        return
    assert (sent.method, sent.path) == ("POST", f"/v1/sandboxes/{SANDBOX_ID}/execs")
    check("Sandbox.exec", ExecRequest, sent.body)


@FUZZ
@given(method=st.sampled_from(["ls", "mkdir", "rm", "open", "watch"]), path=paths,
       flag=st.booleans())
def test_file_methods_refuse_paths_the_engine_cannot_take(method: str, path: Any,
                                                         flag: bool) -> None:
    sb = a_sandbox()
    calls: dict[str, Callable[[], object]] = {
        "ls": lambda: sb.ls(path), "mkdir": lambda: sb.mkdir(path, parents=flag),
        "rm": lambda: sb.rm(path, recursive=flag), "open": lambda: sb.open(path, "r"),
        "watch": lambda: next(iter(sb.watch(path))),
    }
    sent = outcome(calls[method], "Sandbox files")
    if sent is None:
        return
    sent_path = (sent.body or {}).get("path") or (sent.params or {}).get("path")
    # The engine's rule (sandboxfs.SandboxFS.path): a non-empty string without NUL.
    assert isinstance(sent_path, str) and sent_path and "\0" not in sent_path


@FUZZ
@given(grace=wild | numbers, timeout=wild | numbers, tags=env_like, sandbox_id=wild,
       app_name=wild, name=wild)
def test_other_sandbox_methods_refuse_or_send_what_the_engine_takes(
        grace: Any, timeout: Any, tags: Any, sandbox_id: Any, app_name: Any, name: Any
) -> None:
    sb = a_sandbox()
    sent = outcome(lambda: sb.terminate(grace_period=grace), "Sandbox.terminate")
    if sent is not None:
        check("Sandbox.terminate", TerminateRequest, sent.body)
    sent = outcome(lambda: sb.wait_until_ready(timeout=timeout), "Sandbox.wait_until_ready")
    if sent is not None:
        assert 0 < sent.params["timeout"] <= 3600
    sent = outcome(lambda: sb.set_tags(tags), "Sandbox.set_tags")
    if sent is not None:
        check("Sandbox.set_tags", SetTagsRequest, sent.body)
    sent = outcome(lambda: Sandbox.from_id(sandbox_id), "Sandbox.from_id")
    if sent is not None:
        assert sent.path == f"/v1/sandboxes/{sandbox_id}"
    sent = outcome(lambda: Sandbox.from_name(app_name, name), "Sandbox.from_name")
    if sent is not None:
        check("Sandbox.from_name", LookupAppRequest, {"name": app_name})
        check("Sandbox.from_name", CreateSandboxRequest, {"name": name})


# Images ------------------------------------------------------------------------------------
def _check_image(image: Image) -> None:
    steps = [dict(step) for step in image._steps]  # run and config steps: sent as they are
    check("Image", BuildImageRequest, {"base": image._base, "steps": steps})


_packages = st.lists(st.from_regex(r"[a-z][a-z0-9.+-]{0,8}", fullmatch=True), min_size=1,
                     max_size=3)
#: method -> (valid positional arguments, keyword arguments it takes)
IMAGE_METHODS: dict[str, tuple[st.SearchStrategy[list[Any]], tuple[str, ...]]] = {
    "apt_install": (_packages, ("env", "secrets", "force_build")),
    "pip_install": (_packages, ("env", "secrets", "force_build", "extra_options",
                                "index_url", "extra_index_url", "find_links", "pre")),
    "uv_pip_install": (_packages, ("env", "secrets", "force_build", "extra_options",
                                   "index_url", "extra_index_url", "find_links", "pre")),
    "run_commands": (st.lists(_safe_text.filter(bool), min_size=1, max_size=2),
                     ("env", "secrets", "force_build")),
    "env": (st.dictionaries(_env_name, _safe_text, min_size=1, max_size=2).map(
        lambda env: [env]), ()),
    "workdir": (st.sampled_from([["/"], ["/srv"]]), ()),
    "entrypoint": (st.lists(_safe_text, max_size=2).map(lambda argv: [argv]), ()),
    "cmd": (st.lists(_safe_text, max_size=2).map(lambda argv: [argv]), ()),
}
IMAGE_VALID: dict[str, st.SearchStrategy[Any]] = {
    "env": _env, "secrets": st.lists(_env.map(Secret.from_dict), max_size=1),
    "force_build": st.booleans(), "pre": st.booleans(),
    "extra_options": st.sampled_from(["", "--no-deps", "-q"]),
    "index_url": st.sampled_from(["https://pypi.org/simple"]),
    "extra_index_url": st.none(), "find_links": st.none(),
}
IMAGE_FAULTY: dict[str, st.SearchStrategy[Any]] = {
    "env": env_like, "secrets": secrets(), "force_build": wild, "pre": wild,
    "extra_options": st.one_of(wild, st.sampled_from(["'", "a\0b", "-q x"])),
    "index_url": wild, "extra_index_url": wild, "find_links": wild,
}
_faulty_positionals = st.lists(st.one_of(
    st.text(max_size=8), st.lists(st.text(max_size=5), max_size=2), env_like, wild,
    st.sampled_from(["-e", "a b", "a\0b", "", "\0"])), min_size=1, max_size=3)


@FUZZ
@given(data=st.data(), method=st.sampled_from(sorted(IMAGE_METHODS)),
       faulty_positionals=st.booleans())
def test_image_steps_are_refused_or_taken_by_the_engine(
        data: st.DataObject, method: str, faulty_positionals: bool) -> None:
    valid_args, keywords = IMAGE_METHODS[method]
    args = data.draw(_faulty_positionals if faulty_positionals else valid_args)
    kwargs, faulty = data.draw(one_faulty({k: IMAGE_VALID[k] for k in keywords},
                                          {k: IMAGE_FAULTY[k] for k in keywords})
                               if keywords else st.just(({}, None)))
    try:
        image = getattr(Image.debian_slim("3.11"), method)(*args, **kwargs)
    except (InvalidError, TypeError):
        assert faulty is not None or faulty_positionals, "valid arguments were refused"
        return
    _check_image(image)


@FUZZ
@given(python_version=wild, tag=wild, ref=wild)
def test_image_bases_are_refused_or_taken_by_the_engine(python_version: Any, tag: Any,
                                                        ref: Any) -> None:
    for make in (lambda: Image.debian_slim(python_version), lambda: Image.from_id(ref),
                 lambda: Image.from_registry(tag)):
        try:
            image = make()
        except (InvalidError, TypeError):
            continue
        _check_image(image)


# Volumes -----------------------------------------------------------------------------------
@FUZZ
@given(name=st.one_of(wild, st.sampled_from(["v", "a" * 64, "a" * 65, "a/b", "../x"])),
       sub_path=st.one_of(wild, st.sampled_from(["a/b", "/a", "..", "a/../b", "a\0b"])))
def test_volume_names_are_refused_or_taken_by_the_engine(name: Any, sub_path: Any) -> None:
    sent = outcome(lambda: Volume.from_name(name, create_if_missing=True).hydrate(), "Volume")
    if sent is not None:
        check("Volume", LookupVolumeRequest, sent.body)
    sent = outcome(lambda: Volume.delete(name), "Volume.delete")
    if sent is not None:
        assert sent.path == f"/v1/volumes/{name}"
        check("Volume.delete", LookupVolumeRequest, {"name": name})
    try:
        mounted = Volume("v", "vo-1").with_mount_options(sub_path=sub_path)
    except (InvalidError, TypeError):
        return
    check("Volume", CreateSandboxRequest, {"volumes": {"/data": mounted.mount()}})


