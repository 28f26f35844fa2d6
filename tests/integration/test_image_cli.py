"""``hutch image build|ls|inspect|rm|prune|export``, and the pip variants in a real image."""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import hutch
from tests.helpers import hutch_cli


def test_build_ls_inspect_rm_prune(engine: dict[str, Any], tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    spec = tmp_path / "images.py"
    spec.write_text("import hutch\n"
                    f"tools = hutch.Image.debian_slim().run_commands('echo {token} > /t')\n"
                    "not_an_image = 42\n")
    built = hutch_cli("image", "build", f"{spec}::tools")
    assert built.returncode == 0, built.stderr.decode()
    ref = built.stdout.decode().strip().splitlines()[-1]
    assert ref.startswith("hutch/step:")
    assert f"echo {token}" in built.stderr.decode()  # the step and its progress were shown

    listing = hutch_cli("image", "ls").stdout.decode()
    assert ref in listing and engine["default_image"] in listing

    inspected = hutch_cli("image", "inspect", ref)
    assert inspected.returncode == 0, inspected.stderr.decode()
    doc = json.loads(inspected.stdout)
    base = json.loads(hutch_cli("image", "inspect", engine["default_image"]).stdout)
    assert doc["ref"] == ref and len(doc["layers"]) == len(base["layers"]) + 1
    assert doc["config"]["rootfs"]["diff_ids"] == [layer["diff_id"] for layer in doc["layers"]]

    layer_dir = Path(engine["data_dir"]) / "layers" / doc["layers"][-1]["diff_id"][7:]
    assert layer_dir.is_dir()
    assert hutch_cli("image", "rm", ref).returncode == 0
    assert ref not in hutch_cli("image", "ls").stdout.decode()
    pruned = hutch_cli("image", "prune")
    assert pruned.returncode == 0, pruned.stderr.decode()
    assert not layer_dir.exists()  # nothing referenced the step's layer any more
    base = hutch.Sandbox.create(timeout=60)  # the base image's layers were kept
    try:
        assert base.exec("true").wait() == 0
    finally:
        base.terminate()

    wrong = hutch_cli("image", "build", f"{spec}::not_an_image")
    assert wrong.returncode != 0 and b"is not a hutch.Image" in wrong.stderr
    missing = hutch_cli("image", "inspect", "hutch/nothing:here")
    assert missing.returncode == 125 and b"NotFoundError" in missing.stderr
    no_output = hutch_cli("image", "export", engine["default_image"])
    assert no_output.returncode != 0 and b"-o FILE.tar" in no_output.stderr


def test_prune_keeps_the_layers_of_running_sandboxes(engine: dict[str, Any]) -> None:
    image = hutch.Image.debian_slim().run_commands(f"echo {uuid.uuid4().hex} > /kept")
    sb = hutch.Sandbox.create(image=image, timeout=60)
    try:
        assert image.object_id is not None
        assert hutch_cli("image", "rm", image.object_id).returncode == 0
        assert hutch_cli("image", "prune").returncode == 0
        p = sb.exec("cat", "/kept")
        assert p.wait() == 0 and len(p.stdout.read().strip()) == 32
    finally:
        sb.terminate()


def test_prune_cache_forgets_steps_unused_for_a_while(engine: dict[str, Any],
                                                     tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    spec = tmp_path / "images.py"
    spec.write_text("import hutch\n"
                    f"old = hutch.Image.debian_slim().run_commands('echo {token} > /old')\n"
                    f"used = hutch.Image.debian_slim().run_commands('echo {token} > /used')\n")
    refs = {}
    for name in ("old", "used"):
        built = hutch_cli("image", "build", f"{spec}::{name}")
        assert built.returncode == 0, built.stderr.decode()
        refs[name] = built.stdout.decode().strip().splitlines()[-1]
    # both last used two days ago; then `used` is built again: a cache hit notes the use
    for ref in refs.values():
        doc = json.loads(hutch_cli("image", "inspect", ref).stdout)
        blob = Path(engine["data_dir"]) / "oci" / "blobs" / "sha256" / doc["digest"][7:]
        os.utime(blob, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    again = hutch_cli("image", "build", f"{spec}::used")
    assert again.returncode == 0 and b"CACHED" in again.stderr, again.stderr.decode()

    pruned = hutch_cli("image", "prune", "--cache", "--older-than", "1d")
    assert pruned.returncode == 0, pruned.stderr.decode()
    assert re.match(rb"forgot [1-9]\d* cached build steps", pruned.stdout), pruned.stdout
    listing = hutch_cli("image", "ls").stdout.decode()
    assert refs["old"] not in listing and refs["used"] in listing
    assert engine["default_image"] in listing  # a base image is no build step
    rebuilt = hutch_cli("image", "build", f"{spec}::old")  # runs again, not CACHED
    assert rebuilt.returncode == 0, rebuilt.stderr.decode()
    step_line = next(line for line in rebuilt.stderr.decode().splitlines()
                     if f"echo {token} > /old" in line)
    assert "CACHED" not in step_line, rebuilt.stderr.decode()
    bad = hutch_cli("image", "prune", "--cache", "--older-than", "soon")
    assert bad.returncode != 0 and b"--older-than expects an age" in bad.stderr
    bad_size = hutch_cli("image", "prune", "--cache", "--keep-storage", "lots")
    assert bad_size.returncode != 0 and b"--keep-storage expects a size" in bad_size.stderr


def test_uv_and_requirements_files(engine: dict[str, Any], tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six\n")
    image = (hutch.Image.debian_slim()
             .pip_install_from_requirements(str(requirements))
             .uv_pip_install("idna"))
    sb = hutch.Sandbox.create(image=image, timeout=60)
    try:
        p = sb.exec("python3", "-c", "import six, idna; print('ok')")
        assert (p.stdout.read(), p.wait()) == ("ok\n", 0), p.stderr.read()
        assert sb.exec("uv", "--version").wait() == 0
    finally:
        sb.terminate()
