"""The image builder end to end: steps checked inside sandboxes, the per-step cache, failed
and concurrent builds, entrypoint/cmd, deletions in a layer, and the store read by skopeo.

One multi-step image (the only one with network steps: apt and pip, cached across runs in
the suite's data dir) is built per module; the cache tests use cheap ``run_commands`` steps
made new by a uuid in the command.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

import hutch
from hutch.exception import ImageBuildError, InvalidError
from hutch.sdk.transport import request_blocking
from tests.helpers import engine_dirs

PKG, MOD = "hutch_it_srcpkg", "hutch_it_srcmod"
STEP = re.compile(r"^=> \[(\d+)/(\d+)\] (CACHED )?", re.M)
STAMP = re.compile(r"^\d{19}$", re.M)  # `date +%s%N`


def base() -> hutch.Image:
    return hutch.Image.debian_slim("3.11")


@contextmanager
def sandbox_of(image: hutch.Image, *args: str) -> Iterator[hutch.Sandbox]:
    sb = hutch.Sandbox.create(*args, image=image, timeout=120)
    try:
        yield sb
    finally:
        sb.terminate()


def sh(sb: hutch.Sandbox, script: str, workdir: str | None = None) -> str:
    p = sb.exec("sh", "-c", script, workdir=workdir)
    out, err = p.stdout.read(), p.stderr.read()
    assert p.wait() == 0, f"{script!r} failed: {err}"
    return str(out)


def build_logged(image: hutch.Image, capfd: pytest.CaptureFixture[str]
                 ) -> tuple[str, dict[int, bool], Exception | None]:
    """Build under enable_output: its stderr, {step: cached}, and the error if it failed."""
    capfd.readouterr()
    error: Exception | None = None
    with hutch.enable_output():
        try:
            image.build()
        except Exception as exc:
            error = exc
    err = capfd.readouterr().err
    return err, {int(m[1]): bool(m[3]) for m in STEP.finditer(err)}, error


def inspect(ref: str) -> dict[str, Any]:
    doc: dict[str, Any] = request_blocking("GET", "/v1/images/inspect", params={"ref": ref})
    return doc


# the multi-step image ----------------------------------------------------------------------
@dataclass
class Multi:
    declare: Callable[[], hutch.Image]
    image: hutch.Image
    seconds: float
    sb: hutch.Sandbox


def _write(path: Path, text: str, mode: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture(scope="module")
def multi(engine: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Multi]:
    root = tmp_path_factory.mktemp("ctx")
    hello = _write(root / "hello.txt", "hello file\n", 0o640)
    script = _write(root / "tool.sh", "#!/bin/sh\necho script\n", 0o750)
    tree = root / "tree"
    _write(tree / "run.sh", "#!/bin/sh\necho run\n", 0o755)
    _write(tree / "sub" / "keep.txt", "kept\n", 0o600)
    (tree / "sub").chmod(0o750)
    _write(tree / "sub" / "noise.log", "ignored\n", 0o644)
    _write(tree / "top.log", "ignored\n", 0o644)
    _write(tree / "skip" / "inside.txt", "ignored\n", 0o644)
    (tree / "link").symlink_to("sub/keep.txt")
    src = root / "src"
    _write(src / PKG / "__init__.py", "from . import sub\nVALUE = 'pkg'\n", 0o644)
    _write(src / PKG / "sub.py", "X = 'sub'\n", 0o644)
    _write(src / PKG / "__pycache__" / "junk.pyc", "not bytecode", 0o644)
    _write(src / f"{MOD}.py", "Y = 'mod'\n", 0o644)

    def declare() -> hutch.Image:
        return (base().apt_install("jq").pip_install("six")
                .run_commands("mkdir -p /opt/tool/bin",
                              "printf '#!/bin/sh\\necho tool-ok\\n' > /opt/tool/bin/mytool",
                              "chmod 755 /opt/tool/bin/mytool")
                .env({"PATH": "/opt/tool/bin:$PATH", "GREETING": "a-$NOT_SET-b"})
                .workdir("/app")
                .add_local_file(hello, "/app/data/hello.txt", copy=True)
                .add_local_file(script, "/usr/local/bin/", copy=True)
                .add_local_dir(tree, "/app/tree", ignore=["*.log", "skip"], copy=True)
                .add_local_python_source(PKG, MOD, copy=True))

    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(src))
        image = declare()
        start = time.monotonic()
        image.build()
        seconds = time.monotonic() - start
        with sandbox_of(image) as sb:
            yield Multi(declare, image, seconds, sb)


MULTI_STEPS = 12  # base, apt, pip, run, env, workdir, 2 files, dir, package, module, env
MULTI_LAYER_STEPS = 8


def test_packages_and_run_steps_are_in_the_image(multi: Multi) -> None:
    assert sh(multi.sb, "python3 -c 'import six; print(six.__name__)'") == "six\n"
    assert sh(multi.sb, "echo '{\"a\": [1, 2]}' | jq -c '.a | length'") == "2\n"
    p = multi.sb.exec("mytool")  # found through the image's PATH
    assert (p.stdout.read(), p.wait()) == ("tool-ok\n", 0)


def test_env_is_expanded_and_workdir_is_the_cwd(multi: Multi) -> None:
    path = sh(multi.sb, 'echo "$PATH"').strip().split(":")
    assert path[0] == "/opt/tool/bin"
    assert "/usr/bin" in path[1:]
    assert sh(multi.sb, 'echo "$GREETING"') == "a--b\n"
    assert sh(multi.sb, "pwd") == "/app\n"


def test_local_files_have_their_content_and_modes(multi: Multi) -> None:
    assert sh(multi.sb, "cat /app/data/hello.txt") == "hello file\n"
    assert sh(multi.sb, "tool.sh") == "script\n"
    stat = sh(multi.sb, "stat -c '%a %u %n' /app/data/hello.txt /usr/local/bin/tool.sh "
                        "/app/tree/run.sh /app/tree/sub /app/tree/sub/keep.txt")
    assert stat.splitlines() == [
        "640 0 /app/data/hello.txt", "750 0 /usr/local/bin/tool.sh", "755 0 /app/tree/run.sh",
        "750 0 /app/tree/sub", "600 0 /app/tree/sub/keep.txt"]
    assert sh(multi.sb, "cat /app/tree/link; readlink /app/tree/link") == "kept\nsub/keep.txt\n"


def test_ignore_patterns_leave_files_out(multi: Multi) -> None:
    found = sh(multi.sb, "cd /app/tree && find . | sort").split()
    assert found == [".", "./link", "./run.sh", "./sub", "./sub/keep.txt"]


def test_local_python_source_is_importable_from_workdir_and_root(multi: Multi) -> None:
    code = f"python3 -c 'import {PKG}, {MOD}; print({PKG}.VALUE, {PKG}.sub.X, {MOD}.Y)'"
    assert sh(multi.sb, code) == "pkg sub mod\n"
    assert sh(multi.sb, code, workdir="/") == "pkg sub mod\n"
    # a bytecode cache the imports above wrote may be there, not the one left out
    assert sh(multi.sb, f"ls /root/{PKG}/*.py; find /root/{PKG} -name junk.pyc").split() \
        == [f"/root/{PKG}/__init__.py", f"/root/{PKG}/sub.py"]
    assert sh(multi.sb, "stat -c %a /root") == "700\n"  # copying into it keeps its mode


def test_same_declaration_is_a_cache_hit(multi: Multi,
                                         capfd: pytest.CaptureFixture[str]) -> None:
    again = multi.declare()
    assert again.object_id is None
    start = time.monotonic()
    again.build()
    seconds = time.monotonic() - start
    assert again.object_id == multi.image.object_id
    assert seconds < 1.0, f"a fully cached build took {seconds:.2f} s"
    _, steps, error = build_logged(multi.declare(), capfd)
    assert error is None
    assert steps == dict.fromkeys(range(1, MULTI_STEPS + 1), True)
    print(f"\nmulti-step image: first build {multi.seconds:.2f} s, cached {seconds:.3f} s")


def test_skopeo_reads_the_store(multi: Multi, engine: dict[str, Any]) -> None:
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        pytest.skip("skopeo is not installed")
    ref = multi.image.object_id
    assert ref is not None
    result = subprocess.run([skopeo, "inspect", f"oci:{engine['data_dir']}/oci:{ref}"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    base_layers = len(inspect(engine["default_image"])["layers"])
    assert len(doc["Layers"]) == base_layers + MULTI_LAYER_STEPS
    assert doc["Layers"] == [layer["digest"] for layer in inspect(ref)["layers"]]
    assert any(e.startswith("PATH=/opt/tool/bin:") for e in doc["Env"])


# the cache ---------------------------------------------------------------------------------
def test_changing_the_last_step_rebuilds_only_that_step(
        engine: dict[str, Any], capfd: pytest.CaptureFixture[str]) -> None:
    token = uuid4().hex
    head = base().run_commands(f"echo {token} > /first").env({"TOKEN": token})
    _, steps, error = build_logged(head.run_commands("echo one > /last"), capfd)
    assert error is None and steps == {1: True, 2: False, 3: False, 4: False}
    image = head.run_commands("echo two > /last")
    _, steps, error = build_logged(image, capfd)
    assert error is None and steps == {1: True, 2: True, 3: True, 4: False}
    with sandbox_of(image) as sb:
        assert sh(sb, 'cat /first /last; echo "$TOKEN"') == f"{token}\ntwo\n{token}\n"


def test_local_file_content_is_in_the_cache_key(
        engine: dict[str, Any], tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    token = uuid4().hex
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(token)
    b.write_text("first")

    def declare() -> hutch.Image:
        return base().add_local_file(a, "/a.txt", copy=True).add_local_file(b, "/b.txt",
                                                                            copy=True)

    first = declare().build().object_id
    assert declare().build().object_id == first
    b.write_text("second")
    changed = declare()
    _, steps, error = build_logged(changed, capfd)
    assert error is None and steps == {1: True, 2: True, 3: False}
    assert changed.object_id != first
    with sandbox_of(changed) as sb:
        assert sh(sb, "cat /a.txt; echo; cat /b.txt") == f"{token}\nsecond"
    b.write_text("first")
    assert declare().build().object_id == first


def test_force_build_reruns_a_run_step(engine: dict[str, Any],
                                       capfd: pytest.CaptureFixture[str]) -> None:
    head = base().run_commands(f"echo {uuid4().hex} > /token")

    def declare() -> hutch.Image:
        return head.run_commands("date +%s%N | tee /stamp", force_build=True)

    stamps = []
    for attempt in range(2):
        image = declare()
        log, steps, error = build_logged(image, capfd)
        assert error is None and steps == {1: True, 2: attempt == 1, 3: False}
        stamps += STAMP.findall(log)
    assert len(stamps) == 2 and stamps[0] != stamps[1]
    with sandbox_of(image) as sb:
        assert sh(sb, "cat /stamp") == stamps[1] + "\n"


def test_steps_after_a_forced_step_see_its_new_output(
        engine: dict[str, Any], capfd: pytest.CaptureFixture[str]) -> None:
    head = base().run_commands(f"echo {uuid4().hex} > /token")

    def declare() -> hutch.Image:
        return (head.run_commands("date +%s%N | tee /stamp", force_build=True)
                .run_commands("cp /stamp /copy"))

    declare().build()
    image = declare()
    log, _, error = build_logged(image, capfd)
    assert error is None
    stamps = STAMP.findall(log)
    assert len(stamps) == 1
    with sandbox_of(image) as sb:
        assert sh(sb, "cat /stamp /copy") == f"{stamps[0]}\n{stamps[0]}\n"


# failures and concurrency ------------------------------------------------------------------
def test_a_failing_step_raises_and_is_not_cached(
        engine: dict[str, Any], capfd: pytest.CaptureFixture[str]) -> None:
    token = uuid4().hex
    good = base().run_commands(f"echo {token} > /ok")
    command = f"seq 101 130; echo marker-$((6 * 7))-{token}; exit 7"
    tmp = Path(engine["data_dir"]) / "tmp"
    before = set(tmp.iterdir())
    for attempt in range(2):
        log, steps, error = build_logged(good.run_commands(command), capfd)
        assert isinstance(error, ImageBuildError), error
        message = str(error)
        assert "step 3" in message and f"`{command}`" in message and "code 7" in message
        assert message.splitlines()[-2:] == ["130", f"marker-42-{token}"]
        assert steps == {1: True, 2: attempt == 1, 3: False}
        assert f"marker-42-{token}" in log.splitlines()  # the step ran (again)
    assert set(tmp.iterdir()) == before  # no build directory left behind
    _, steps, error = build_logged(base().run_commands(f"echo {token} > /ok"), capfd)
    assert error is None and steps == {1: True, 2: True}


def test_concurrent_builds_run_a_new_step_once(
        engine: dict[str, Any], capfd: pytest.CaptureFixture[str]) -> None:
    command = f"echo {uuid4().hex} > /token; date +%s%N | tee /stamp; sleep 1"
    capfd.readouterr()
    with hutch.enable_output(), ThreadPoolExecutor(2) as pool:
        images = list(pool.map(lambda _: base().run_commands(command).build(), range(2)))
    log = capfd.readouterr().err
    assert images[0].object_id is not None
    assert images[0].object_id == images[1].object_id
    assert sorted(m[3] or "" for m in STEP.finditer(log) if m[1] == "2") == ["", "CACHED "]
    stamps = STAMP.findall(log)
    assert len(stamps) == 1
    with sandbox_of(images[0]) as one, sandbox_of(images[1]) as two:
        assert sh(one, "cat /stamp") == sh(two, "cat /stamp") == stamps[0] + "\n"


# entrypoint and cmd ------------------------------------------------------------------------
@pytest.mark.parametrize(("steps", "args", "expected"), [
    ({"cmd": ["python3", "-c", "print('from cmd')"]}, (), "from cmd\n"),
    ({"entrypoint": ["echo", "ep"]}, ("x",), "ep x\n"),
    ({"entrypoint": ["echo", "ep"]}, (), "ep\n"),
    ({"entrypoint": ["echo", "ep"], "cmd": ["default"]}, (), "ep default\n"),
    ({"entrypoint": ["echo", "ep"], "cmd": ["default"]}, ("x",), "ep x\n"),
])
def test_entrypoint_and_cmd(engine: dict[str, Any], steps: dict[str, list[str]],
                            args: tuple[str, ...], expected: str) -> None:
    image = base()
    if "entrypoint" in steps:
        image = image.entrypoint(steps["entrypoint"])
    if "cmd" in steps:
        image = image.cmd(steps["cmd"])
    sb = hutch.Sandbox.create(*args, image=image, timeout=60)
    try:
        assert sb.stdout.read() == expected
        sb.wait()
        assert sb.returncode == 0
    finally:
        sb.terminate()


def test_plain_image_without_args_idles(engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create(image=base(), timeout=60)
    assert sb.exec("true").wait() == 0  # it is running
    assert sb.poll() is None
    assert sb.terminate(wait=True) == 137


# deletions ---------------------------------------------------------------------------------
DELETE = "rm -rf /usr/share/doc /etc/skel && mkdir /etc/skel && echo {token} > /etc/skel/only"
CHECK = "ls /usr/share/doc 2>&1 || true; ls -A /etc/skel; cat /etc/skel/only; ls -A /usr/share"


def _check_deleted(sb: hutch.Sandbox, token: str) -> None:
    lines = sh(sb, CHECK).splitlines()
    assert "No such file or directory" in lines[0]
    assert lines[1:3] == ["only", token]
    assert not [name for name in lines[3:] if name.startswith(".wh.")]


def test_a_deletion_in_a_layer_hides_base_files(engine: dict[str, Any]) -> None:
    token = uuid4().hex
    image = base().run_commands(DELETE.format(token=token)).build()
    assert image.object_id is not None
    layer = inspect(image.object_id)["layers"][-1]
    blob = Path(engine["data_dir"], "oci", "blobs", "sha256", layer["digest"].split(":")[1])
    with gzip.open(blob) as raw, tarfile.open(fileobj=raw) as tar:
        names = set(tar.getnames())
    assert {"usr/share/.wh.doc", "etc/skel/.wh..wh..opq", "etc/skel/only"} <= names
    with sandbox_of(image) as sb:
        _check_deleted(sb, token)
    with sandbox_of(base()) as sb:
        assert sh(sb, "ls -A /etc/skel; test -f /usr/share/doc/bash/copyright && echo doc") \
            == ".bash_logout\n.bashrc\n.profile\ndoc\n"


def test_a_layer_unpacked_from_its_blob_keeps_its_deletions(engine: dict[str, Any]) -> None:
    """The unpacked layer directory is lost (as after a crash): it comes back from the blob."""
    token = uuid4().hex
    image = base().run_commands(DELETE.format(token=token)).build()
    assert image.object_id is not None
    diff_id = inspect(image.object_id)["layers"][-1]["diff_id"].split(":")[1]
    layer = Path(engine["data_dir"], "layers", diff_id)
    moved = layer.with_name(f"{diff_id}.moved-by-test")
    layer.rename(moved)
    try:
        with sandbox_of(image) as sb:
            assert layer.is_dir()
            _check_deleted(sb, token)
    finally:  # put the original back, whatever was unpacked
        unpacked = layer.with_name(f"{diff_id}.unpacked-by-test")
        if layer.exists():
            layer.rename(unpacked)
        moved.rename(layer)
        shutil.rmtree(unpacked, ignore_errors=True)


# arguments ---------------------------------------------------------------------------------
def test_bad_arguments_raise_before_anything_runs(tmp_path: Path) -> None:
    local = tmp_path / "f.txt"
    local.write_text("x")
    runtime = tmp_path / "runtime"
    with engine_dirs(runtime, tmp_path / "data"):  # an engine started here would show
        image = base()
        calls: list[Callable[[], object]] = [
            lambda: image.pip_install("-e", "x"),
            lambda: image.add_local_file(local, "relative/path"),
            lambda: image.env({"A": 1}),  # type: ignore[dict-item]
            lambda: image.workdir("app"),
            lambda: image.entrypoint("echo"),  # type: ignore[arg-type]
            lambda: image.add_local_dir(tmp_path, "/x", ignore="*.log"),
            lambda: image.add_local_python_source("hutch_it_no_such_module"),
        ]
        for call in calls:
            with pytest.raises(InvalidError):
                call()
    assert not runtime.exists()


# HUTCH_FORCE_BUILD (read by the SDK) -------------------------------------------------------
def test_hutch_force_build_reruns_every_step(engine: dict[str, Any],
                                             monkeypatch: pytest.MonkeyPatch,
                                             capfd: pytest.CaptureFixture[str]) -> None:
    head = hutch.Image.from_id(engine["default_image"])  # a forced Debian base takes long
    command = f"echo {uuid4().hex} > /token; date +%s%N | tee /stamp"
    image = head.run_commands(command)
    _, steps, error = build_logged(image, capfd)
    assert error is None and steps == {1: True, 2: False}
    monkeypatch.setenv("HUTCH_FORCE_BUILD", "1")
    stamps = []
    for _ in range(2):  # the Image already built is built again too
        log, steps, error = build_logged(image, capfd)
        assert error is None and steps == {1: True, 2: False}
        stamps += STAMP.findall(log)
    assert len(set(stamps)) == 2
    monkeypatch.setenv("HUTCH_FORCE_BUILD", "0")
    again = head.run_commands(command)
    _, steps, error = build_logged(again, capfd)
    assert error is None and steps == {1: True, 2: True}
    with sandbox_of(again) as sb:
        assert sh(sb, "cat /stamp") == stamps[-1] + "\n"
