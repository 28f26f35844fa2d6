"""hutch images and the standard tools: a local registry, OCI archives, umoci, podman.

A registry (Debian's docker-registry) is started by the test on a free loopback port; the
podman check uses its own storage under tmp_path.
"""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import hutch
from tests.helpers import hutch_cli, wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (tools/setup-host.sh installs it)")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _need("docker-registry")
    root = tmp_path_factory.mktemp("registry")
    port = _free_port()
    config = root / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\n"
                      f"http:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def answers() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(answers, timeout=30, what="the registry")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def marked_image(engine: dict[str, Any]) -> hutch.Image:
    token = uuid.uuid4().hex
    return hutch.Image.debian_slim().run_commands(f"echo {token} > /marker").build()


def _layout(engine: dict[str, Any]) -> Path:
    return Path(engine["data_dir"]) / "oci"


def _read(image: hutch.Image, path: str) -> str:
    sb = hutch.Sandbox.create(image=image, timeout=60)
    try:
        p = sb.exec("cat", path)
        out: str = p.stdout.read()
        assert p.wait() == 0, p.stderr.read()
        return out
    finally:
        sb.terminate()


def test_push_to_a_local_registry_and_build_on_the_pulled_image(
        engine: dict[str, Any], registry: str, marked_image: hutch.Image) -> None:
    _need("skopeo")
    target = f"{registry}/hutch/interop:{uuid.uuid4().hex[:8]}"
    push = subprocess.run(["skopeo", "copy", "--dest-tls-verify=false",
                           f"oci:{_layout(engine)}:{marked_image.object_id}",
                           f"docker://{target}"], capture_output=True, text=True)
    assert push.returncode == 0, push.stderr
    pulled = hutch.Image.from_registry(target).run_commands("echo added >> /marker")
    expected = _read(marked_image, "/marker") + "added\n"
    assert _read(pulled, "/marker") == expected


def test_an_unknown_registry_image_is_a_build_error(registry: str) -> None:
    with pytest.raises(hutch.exception.ImageBuildError, match="skopeo could not copy"):
        hutch.Image.from_registry(f"{registry}/hutch/none:missing").build()


def test_export_runs_under_podman_and_imports_back(
        engine: dict[str, Any], marked_image: hutch.Image, tmp_path: Path) -> None:
    _need("skopeo")
    archive = tmp_path / "image.tar"
    assert marked_image.object_id is not None
    r = hutch_cli("image", "export", marked_image.object_id, "-o", str(archive))
    assert r.returncode == 0, r.stderr.decode()
    marker = _read(marked_image, "/marker")
    assert _read(hutch.Image.from_oci_archive(archive), "/marker") == marker
    _need("podman")
    scratch = Path(tempfile.mkdtemp(prefix="hpm-", dir="/tmp"))  # podman wants short paths
    storage = ["--root", str(scratch / "root"), "--runroot", str(scratch / "run")]
    try:
        load = subprocess.run(["podman", *storage, "load", "-q", "-i", str(archive)],
                              capture_output=True, text=True, timeout=300)
        assert load.returncode == 0, load.stderr
        name = load.stdout.strip().rsplit(" ", 1)[-1]
        run = subprocess.run(["podman", *storage, "run", "--rm", name, "cat", "/marker"],
                             capture_output=True, text=True, timeout=300)
        assert (run.returncode, run.stdout) == (0, marker), run.stderr
    finally:
        subprocess.run(["podman", *storage, "unshare", "rm", "-rf", str(scratch)],
                       capture_output=True, timeout=120)
        shutil.rmtree(scratch, ignore_errors=True)


def _whiteout_layer() -> bytes:
    """A layer that deletes /usr/share/doc, hides /etc/skel's contents and adds files."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        def add(name: str, data: bytes | None = None) -> None:
            info = tarfile.TarInfo(name)
            if data is None and not name.endswith(".opq") and ".wh." not in name:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
                return
            info.size = len(data or b"")
            tar.addfile(info, io.BytesIO(data or b""))

        add("usr/share/.wh.doc", b"")
        add("etc/skel")
        add("etc/skel/.wh..wh..opq", b"")
        add("etc/skel/only-file", b"kept\n")
        add("opt/added.txt", b"from umoci\n")
    return out.getvalue()


def test_umoci_layer_with_whiteouts_imports(engine: dict[str, Any], tmp_path: Path) -> None:
    """An image made by umoci (another tool's layer, OCI whiteouts) runs as it should."""
    _need("umoci")
    _need("skopeo")
    layout = tmp_path / "layout"
    copy = subprocess.run(["skopeo", "copy", f"oci:{_layout(engine)}:{engine['default_image']}",
                           f"oci:{layout}:base"], capture_output=True, text=True)
    assert copy.returncode == 0, copy.stderr
    layer = tmp_path / "layer.tar"
    layer.write_bytes(_whiteout_layer())
    add = subprocess.run(["umoci", "raw", "add-layer", "--image", f"{layout}:base", str(layer)],
                         capture_output=True, text=True)
    assert add.returncode == 0, add.stderr
    image = hutch.Image.from_oci_layout(layout, tag="base")
    sb = hutch.Sandbox.create(image=image, timeout=60)
    try:
        script = ("test ! -e /usr/share/doc && test -d /usr/share/perl5 && ls -A /etc/skel && "
                  "cat /opt/added.txt")
        p = sb.exec("sh", "-c", script)
        assert (p.stdout.read(), p.wait()) == ("only-file\nfrom umoci\n", 0), p.stderr.read()
    finally:
        sb.terminate()
