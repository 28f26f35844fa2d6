"""hutch.engine.images.builder without an engine: step cache keys, $VAR expansion,
context checks."""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import tarfile
from pathlib import Path
from typing import Any, cast

import pytest

from hutch.api.imagemodels import ConfigStep, CopyStep, RunStep
from hutch.engine.errors import Invalid
from hutch.engine.images.builder import (
    Builder,
    LayerStep,
    _check_member,
    describe,
    expand,
    secret_salt,
    step_key,
    step_ref,
)
from hutch.engine.runtime.base import OCIRuntime
from hutch.imagebuild.layout import RUNS_CMD_LABEL, ImageStore

PARENT = "a" * 64
CONTEXT = "sha256:" + "c" * 64
SECRET = "hunter2-very-secret"
HEX64 = re.compile(r"[0-9a-f]{64}")


def _run(**kw: Any) -> RunStep:
    doc: dict[str, Any] = {"commands": ["echo one", "echo two"], "env": {"A": "1"},
                           "secret_env": {"TOKEN": SECRET}, "description": "d",
                           "force_build": False}
    return RunStep.model_validate({**doc, **kw})


def _copy(**kw: Any) -> CopyStep:
    return CopyStep.model_validate({"context": CONTEXT, "dest": "/app", "description": "d", **kw})


def _config(**kw: Any) -> ConfigStep:
    doc: dict[str, Any] = {"env": {"A": "1"}, "workdir": "/w", "entrypoint": ["/bin/sh"],
                           "cmd": ["-c", "true"]}
    return ConfigStep.model_validate({**doc, **kw})


# step_key ---------------------------------------------------------------------------------
def test_key_is_a_stable_hash() -> None:
    for step in (_run(), _copy(), _config()):
        key = step_key(PARENT, step)
        assert HEX64.fullmatch(key)
        assert step_key(PARENT, step) == key
        assert step_key(PARENT, step.model_copy(deep=True)) == key


@pytest.mark.parametrize(("base", "changed"), [
    (_run(), _run(commands=["echo one", "echo 2"])),
    (_run(), _run(commands=["echo one"])),
    (_run(), _run(commands=["echo two", "echo one"])),
    (_run(commands=["a b"]), _run(commands=["a", "b"])),
    (_run(), _run(env={"A": "2"})),
    (_run(), _run(env={"B": "1"})),
    (_run(), _run(env={})),
    (_run(), _run(secret_env={"TOKEN": SECRET + "!"})),
    (_run(), _run(secret_env={"OTHER": SECRET})),
    (_run(), _run(secret_env={})),
    (_run(secret_env={}), _run(secret_env={"TOKEN": ""})),
    (_run(env={}, secret_env={"A": "1"}), _run(env={"A": "1"}, secret_env={})),
    (_copy(), _copy(context="sha256:" + "d" * 64)),
    (_copy(), _copy(dest="/app/")),
    (_copy(), _copy(dest="/other")),
    (_config(), _config(env={"A": "2"})),
    (_config(), _config(env=None)),
    (_config(), _config(workdir="/x")),
    (_config(), _config(workdir=None)),
    (_config(), _config(entrypoint=["/bin/bash"])),
    (_config(), _config(cmd=["-c", "false"])),
    (_config(), _config(cmd=None)),
    (_config(entrypoint=None, cmd=["x"]), _config(entrypoint=["x"], cmd=None)),
], ids=lambda s: type(s).__name__)
def test_keyed_fields_change_the_key(base: LayerStep, changed: LayerStep) -> None:
    assert step_key(PARENT, base) != step_key(PARENT, changed)


def test_kind_changes_the_key() -> None:
    keys = {step_key(PARENT, s) for s in (_run(), _copy(), _config(), ConfigStep())}
    assert len(keys) == 4


@pytest.mark.parametrize("step", [_run(), _copy()], ids=lambda s: type(s).__name__)
def test_description_and_force_build_do_not_change_the_key(step: RunStep | CopyStep) -> None:
    key = step_key(PARENT, step)
    assert step_key(PARENT, step.model_copy(update={"description": "other words"})) == key
    if isinstance(step, RunStep):
        assert step_key(PARENT, step.model_copy(update={"force_build": True})) == key


@pytest.mark.parametrize("step", [_run(), _copy(), _config()], ids=lambda s: type(s).__name__)
def test_key_depends_on_parent(step: LayerStep) -> None:
    key = step_key(PARENT, step)
    assert step_key("b" * 64, step) != key
    assert step_key("", step) != key
    # chained: a different first step changes the second step's key too
    assert step_key(step_key(PARENT, _run()), step) != step_key(step_key(PARENT, _copy()), step)


def test_secret_values_never_appear_in_clear() -> None:
    step = _run(secret_env={"TOKEN": SECRET})
    key = step_key(PARENT, step)
    other = step_key(PARENT, _run(secret_env={"TOKEN": "a-different-secret"}))
    assert key != other
    for text in (key, step_ref(key), describe(step),
                 describe(step.model_copy(update={"description": ""}))):
        assert SECRET not in text


def test_a_key_does_not_let_anyone_test_guesses_of_a_secret(tmp_path: Path) -> None:
    """Secrets count through an HMAC keyed by the engine's own salt: the same step under
    another salt (another user's engine, or an attacker's guess) gets another key, and
    the plain hash of the secret is not what goes in. Steps without secrets keep their
    keys (the cache of every other build stays valid)."""
    import hashlib
    import json

    salt = secret_salt(tmp_path)
    assert len(salt) == 32 and secret_salt(tmp_path) == salt  # made once, then read
    assert (tmp_path / "build-salt").stat().st_mode & 0o777 == 0o600
    step = _run(secret_env={"TOKEN": SECRET})
    assert step_key(PARENT, step, salt) != step_key(PARENT, step, b"x" * 32)
    doc = step.model_dump(exclude={"force_build", "description"})
    doc["secret_env"] = hashlib.sha256(json.dumps({"TOKEN": SECRET}).encode()).hexdigest()
    guessed = hashlib.sha256(f"{PARENT}\n{json.dumps(doc, sort_keys=True, separators=(',', ':'))}"
                             .encode()).hexdigest()
    assert step_key(PARENT, step, salt) != guessed
    plain = _run(secret_env={})
    assert step_key(PARENT, plain, salt) == step_key(PARENT, plain, b"other") \
        == step_key(PARENT, plain)


def test_step_ref() -> None:
    key = step_key(PARENT, _run())
    ref = step_ref(key)
    assert ref == f"hutch/step:{key[:40]}"
    assert step_ref(step_key(PARENT, _copy())) != ref


def test_config_env_order_that_matters_changes_the_key() -> None:
    first = ConfigStep(env={"A": "x", "B": "$A"})
    second = ConfigStep(env={"B": "$A", "A": "x"})
    cfg1: dict[str, Any] = {}
    cfg2: dict[str, Any] = {}
    Builder._configure(cfg1, first)
    Builder._configure(cfg2, second)
    assert cfg1 != cfg2  # different images...
    assert step_key(PARENT, first) != step_key(PARENT, second)  # ...need different keys


# describe ---------------------------------------------------------------------------------
def test_describe() -> None:
    assert describe(_run(description="pip_install six")) == "pip_install six"
    assert describe(_run(description="")) == "RUN echo one && echo two"
    assert describe(_copy(description="add_local_dir x /app")) == "add_local_dir x /app"
    assert describe(_copy(description="")) == f"COPY {CONTEXT[:19]} /app"
    text = describe(ConfigStep(workdir="/srv"))
    assert text == "CONFIG workdir=/srv"


# expand -----------------------------------------------------------------------------------
ENV = {"HOME": "/root", "A": "1", "PATH": "/usr/bin:/bin", "REF": "$HOME", "A_B": "ab"}


@pytest.mark.parametrize(("value", "expected"), [
    ("$HOME/bin", "/root/bin"),
    ("${HOME}/bin", "/root/bin"),
    ("${A}x", "1x"),
    ("$Ax", ""),  # the longest name: Ax, unknown
    ("$A_B", "ab"),
    ("${A}_B", "1_B"),
    ("/opt/bin:$PATH", "/opt/bin:/usr/bin:/bin"),
    ("$A$A${A}", "111"),
    ("$UNKNOWN", ""),
    ("${UNKNOWN}-x", "-x"),
    ("pre-$UNKNOWN-post", "pre--post"),
    ("no variables here", "no variables here"),
    ("", ""),
    ("$", "$"),
    ("cost: 5$", "cost: 5$"),
    ("$1 and $-", "$1 and $-"),
    ("${", "${"),
    ("${A", "${A"),
    ("${1A}", "${1A}"),
    ("$REF", "$HOME"),  # expanded once, not recursively
])
def test_expand(value: str, expected: str) -> None:
    assert expand(value, ENV) == expected


def test_expand_empty_env() -> None:
    assert expand("$HOME:${PATH}:x", {}) == "::x"


# _check_member ----------------------------------------------------------------------------
def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info


@pytest.mark.parametrize("member", [
    _member("file"),
    _member("a/b/c"),
    _member("./a"),
    _member("dir", tarfile.DIRTYPE),
    _member("a..b"),
    _member("..hidden"),
    _member("link", tarfile.SYMTYPE, "/usr/bin/python3"),  # symlinks are kept as they are
    _member("link", tarfile.SYMTYPE, "../sibling"),
    _member("hard", tarfile.LNKTYPE, "a/b/c"),
], ids=lambda m: f"{m.name}->{m.linkname}")
def test_check_member_accepts(member: tarfile.TarInfo) -> None:
    _check_member(member)


@pytest.mark.parametrize("member", [
    _member("/etc/passwd"),
    _member("/"),
    _member(".."),
    _member("../x"),
    _member("a/../../x"),
    _member("a/.."),
    _member("dir/..", tarfile.DIRTYPE),
    _member("../link", tarfile.SYMTYPE, "x"),
    _member("hard", tarfile.LNKTYPE, "/etc/shadow"),
    _member("hard", tarfile.LNKTYPE, "../outside"),
    _member("hard", tarfile.LNKTYPE, "a/../../outside"),
    _member("null", tarfile.CHRTYPE),
    _member("disk", tarfile.BLKTYPE),
    _member("fifo", tarfile.FIFOTYPE),
], ids=lambda m: f"{m.name}->{m.linkname}:{m.type!r}")
def test_check_member_refuses(member: tarfile.TarInfo) -> None:
    with pytest.raises(Invalid):
        _check_member(member)


# Builder._copy_layer (no runtime needed) ----------------------------------------------------
# It chowns the directories leading to dest, as the engine (root in its user namespace) can.
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="_copy_layer chowns to root")


def _context_tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def _builder(tmp_path: Path) -> Builder:
    contexts = tmp_path / "contexts"
    contexts.mkdir()
    return Builder(ImageStore(tmp_path / "data"), cast(OCIRuntime, None), devpts_gid=False,
                   contexts=contexts)


def _upload(builder: Builder, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (builder.contexts / digest.split(":", 1)[1]).write_bytes(data)
    return digest


@needs_root
def test_copy_layer_puts_files_under_dest(tmp_path: Path) -> None:
    builder = _builder(tmp_path)
    digest = _upload(builder, _context_tar([
        (_member("hello.txt"), b"hello"),
        (_member("sub", tarfile.DIRTYPE), None),
        (_member("sub/x"), b"x"),
    ]))
    _, diff_id = builder._copy_layer(CopyStep(context=digest, dest="/app/deep"), [])
    layer = builder.store.layers / diff_id.split(":", 1)[1]
    assert (layer / "app" / "deep" / "hello.txt").read_bytes() == b"hello"
    assert (layer / "app" / "deep" / "sub" / "x").read_bytes() == b"x"
    for d in (layer / "app", layer / "app" / "deep"):
        st = d.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o755, 0, 0)
    assert list(builder.store.tmp.iterdir()) == []


@needs_root
def test_copy_layer_dest_parents_keep_their_lower_mode(tmp_path: Path) -> None:
    builder = _builder(tmp_path)
    bottom = tmp_path / "bottom"
    (bottom / "tmp").mkdir(parents=True)
    (bottom / "tmp").chmod(0o1777)
    (bottom / "srv").mkdir()
    os.chown(bottom / "srv", 1234, 4321)
    (bottom / "srv").chmod(0o750)
    (bottom / "gone").mkdir()
    top = tmp_path / "top"
    top.mkdir()
    try:
        os.mknod(top / "gone", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    except PermissionError:
        pytest.skip("creating an overlay whiteout needs privileges")
    (bottom / "gone").chmod(0o700)
    digest = _upload(builder, _context_tar([(_member("f"), b"f")]))
    layers: list[Path] = []
    for dest in ("/tmp/x", "/srv/app", "/gone/new"):
        _, diff_id = builder._copy_layer(CopyStep(context=digest, dest=dest), [bottom, top])
        layers.append(builder.store.layers / diff_id.split(":", 1)[1])
    tmp_st = (layers[0] / "tmp").stat()
    assert stat.S_IMODE(tmp_st.st_mode) == 0o1777
    srv_st = (layers[1] / "srv").stat()
    assert (stat.S_IMODE(srv_st.st_mode), srv_st.st_uid, srv_st.st_gid) == (0o750, 1234, 4321)
    # a whiteout above hides the lower directory: a new one is 0755 root
    gone_st = (layers[2] / "gone").stat()
    assert (stat.S_IMODE(gone_st.st_mode), gone_st.st_uid) == (0o755, 0)
    assert (layers[2] / "gone" / "new" / "f").read_bytes() == b"f"


@needs_root
def test_copy_layer_refuses_escapes_and_cleans_up(tmp_path: Path) -> None:
    builder = _builder(tmp_path)
    digest = _upload(builder, _context_tar([(_member("ok"), b"ok"),
                                            (_member("../escaped"), b"bad")]))
    with pytest.raises(Invalid):
        builder._copy_layer(CopyStep(context=digest, dest="/app"), [])
    assert list(builder.store.tmp.iterdir()) == []
    assert list(builder.store.layers.iterdir()) == []


def test_copy_layer_needs_the_uploaded_context(tmp_path: Path) -> None:
    builder = _builder(tmp_path)
    with pytest.raises(Invalid):
        builder._copy_layer(CopyStep(context=CONTEXT, dest="/app"), [])


@needs_root
def test_copy_layer_refuses_writing_through_symlinks(tmp_path: Path) -> None:
    builder = _builder(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    digest = _upload(builder, _context_tar([
        (_member("link", tarfile.SYMTYPE, str(outside)), None),
        (_member("link/escaped"), b"pwned"),
    ]))
    try:
        builder._copy_layer(CopyStep(context=digest, dest="/app"), [])
    except Invalid:
        pass
    assert list(outside.iterdir()) == []


@needs_root
def test_copy_layer_refuses_overwriting_through_symlinks(tmp_path: Path) -> None:
    builder = _builder(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("original")
    digest = _upload(builder, _context_tar([
        (_member("f", tarfile.SYMTYPE, str(victim)), None),
        (_member("f"), b"pwned"),
    ]))
    try:
        builder._copy_layer(CopyStep(context=digest, dest="/app"), [])
    except Invalid:
        pass
    assert victim.read_text() == "original"


@needs_root
@pytest.mark.parametrize("dest", ["/../../../app", "/srv/../../../../../app", "//..//app/"])
def test_copy_layer_dest_is_resolved_inside_the_image(tmp_path: Path, dest: str) -> None:
    """``..`` in a destination stops at the image's root: nothing lands beside the scratch
    directory (where ``/../../../x`` once wrote, three levels up)."""
    builder = _builder(tmp_path)
    digest = _upload(builder, _context_tar([(_member("f"), b"f")]))
    before = sorted(os.listdir(tmp_path))
    _, diff_id = builder._copy_layer(CopyStep(context=digest, dest=dest), [])
    layer = builder.store.layers / diff_id.split(":", 1)[1]
    assert (layer / "app" / "f").read_bytes() == b"f"
    assert sorted(os.listdir(tmp_path)) == before
    assert not any(p.name == "app" for p in tmp_path.rglob("app") if layer not in p.parents)
    assert list(builder.store.tmp.iterdir()) == []


@needs_root
def test_copy_layer_follows_the_images_symlinks_inside_it(tmp_path: Path) -> None:
    """``/lib -> usr/lib`` (merged /usr) and ``/escape -> <a host directory>``: the files
    go where the sandbox will look, and the symlinks of the image stay symlinks."""
    builder = _builder(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    bottom = tmp_path / "bottom"
    (bottom / "usr" / "lib").mkdir(parents=True)
    (bottom / "lib").symlink_to("usr/lib")
    (bottom / "escape").symlink_to(outside)
    digest = _upload(builder, _context_tar([(_member("f"), b"f")]))
    _, lib_id = builder._copy_layer(CopyStep(context=digest, dest="/lib/mod"), [bottom])
    _, esc_id = builder._copy_layer(CopyStep(context=digest, dest="/escape/x"), [bottom])
    lib = builder.store.layers / lib_id.split(":", 1)[1]
    esc = builder.store.layers / esc_id.split(":", 1)[1]
    assert (lib / "usr" / "lib" / "mod" / "f").read_bytes() == b"f"
    assert not (lib / "lib").exists()  # the layer does not hide the symlink below
    assert (esc / str(outside).lstrip("/") / "x" / "f").read_bytes() == b"f"
    assert list(outside.iterdir()) == []


@needs_root
def test_copy_layer_failure_leaves_no_mount_and_no_scratch(tmp_path: Path) -> None:
    builder = _builder(tmp_path)
    digest = _upload(builder, _context_tar([(_member("l", tarfile.SYMTYPE, "loop"), None),
                                            (_member("loop", tarfile.SYMTYPE, "l"), None),
                                            (_member("l/x"), b"x")]))
    with pytest.raises(Invalid, match="build context"):
        builder._copy_layer(CopyStep(context=digest, dest="/app"), [])
    assert list(builder.store.tmp.iterdir()) == []
    assert str(builder.store.tmp) not in Path("/proc/self/mountinfo").read_text()


# Builder._configure -------------------------------------------------------------------------
def test_configure_expands_and_labels() -> None:
    cfg: dict[str, Any] = {"Env": ["PATH=/usr/bin", "KEEP=1"]}
    Builder._configure(cfg, ConfigStep(env={"PATH": "/opt/bin:$PATH", "NEW": "${KEEP}x"}))
    assert cfg["Env"] == ["PATH=/opt/bin:/usr/bin", "KEEP=1", "NEW=1x"]
    assert "Labels" not in cfg
    Builder._configure(cfg, ConfigStep(workdir="/srv"))
    assert cfg["WorkingDir"] == "/srv"
    assert "Labels" not in cfg
    Builder._configure(cfg, ConfigStep(cmd=["run"]))
    assert cfg["Cmd"] == ["run"]
    assert cfg["Labels"] == {RUNS_CMD_LABEL: "true"}


def test_expand_alternate_value() -> None:
    """``${VAR:+word}`` is word (itself expanded) when VAR is set and not empty."""
    assert expand("/root${P:+:$P}", {"P": "/x"}) == "/root:/x"
    assert expand("/root${P:+:$P}", {"P": ""}) == "/root"
    assert expand("/root${P:+:$P}", {}) == "/root"
