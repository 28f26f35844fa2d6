"""hutch images and the standard tools: a local registry, OCI archives, umoci, podman.

A registry (Debian's docker-registry) is started by the test on a free loopback port; the
podman check uses its own storage under tmp_path.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import hutch
from tests.helpers import hutch_cli
from tests.integration.registry import free_port as _free_port
from tests.integration.registry import need as _need
from tests.integration.registry import serve_registry as _serve_registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with _serve_registry(tmp_path_factory.mktemp("registry")) as address:
        yield address


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


def test_push_with_the_cli_then_pull_and_run(engine: dict[str, Any], registry: str) -> None:
    """``hutch image push`` (the engine runs skopeo, plain HTTP on loopback): the pushed
    image is in the registry under its tag and a sandbox from it runs Python."""
    _need("skopeo")
    r = hutch_cli("image", "push", engine["default_image"], f"docker://{registry}/pushed:1",
                  timeout=600)
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    assert out.startswith(f"pushed {engine['default_image']} to {registry}/pushed:1 (sha256:")
    manifest = httpx.head(f"http://{registry}/v2/pushed/manifests/1", timeout=30, headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json, "
                  "application/vnd.docker.distribution.manifest.v2+json"})
    assert manifest.status_code == 200
    digest = manifest.headers["Docker-Content-Digest"]
    assert digest in out
    # what a cluster would run: `hutch k8s render` pins the tag to the same digest
    r = hutch_cli("k8s", "render", "pool", "--image", f"{registry}/pushed:1", "--size", "2",
                  "--tls-verify", "false", "-o", "json")
    assert r.returncode == 0, r.stderr.decode()
    template = json.loads(r.stdout)["items"][0]
    assert template["spec"]["podTemplate"]["spec"]["containers"][0]["image"] == \
        f"{registry}/pushed@{digest}"
    image = hutch.Image.from_registry(f"{registry}/pushed:1").build()
    sb = hutch.Sandbox.create(image=image, timeout=60)
    try:
        p = sb.exec("python3", "-c", "print(1)")
        assert (p.stdout.read(), p.wait()) == ("1\n", 0), p.stderr.read()
    finally:
        sb.terminate()


def test_push_of_an_unknown_image_or_to_a_bad_destination_fails_clearly(
        engine: dict[str, Any], registry: str) -> None:
    r = hutch_cli("image", "push", "hutch/none:missing", f"{registry}/pushed:2")
    assert r.returncode == 125
    assert "NotFoundError: image 'hutch/none:missing' not found" in r.stderr.decode()
    for dest in ("oci:/tmp/layout:x", f"{registry}/Upper:1", f"{registry}/x@sha256:{'0' * 64}"):
        r = hutch_cli("image", "push", engine["default_image"], dest)
        assert r.returncode == 125, dest
        assert "InvalidError: " in r.stderr.decode() and dest in r.stderr.decode(), dest
    r = hutch_cli("image", "push", engine["default_image"])
    assert r.returncode != 0 and "needs a destination" in r.stderr.decode()


def test_push_failure_is_a_build_error_without_the_credentials(
        engine: dict[str, Any], registry: str) -> None:
    """Nothing listens where it pushes: skopeo's own error, the password blotted out."""
    _need("skopeo")
    r = hutch_cli("image", "push", engine["default_image"], f"127.0.0.1:{_free_port()}/x:1",
                  "--creds", "robot:hunter22-secret")
    err = r.stderr.decode()
    assert r.returncode == 125 and "ImageBuildError: skopeo could not push" in err, err
    assert "hunter22" not in err


def _bcrypt(password: str) -> str:
    with warnings.catch_warnings():  # (crypt leaves Python in 3.13; Debian 12 has 3.11)
        warnings.simplefilter("ignore", DeprecationWarning)
        crypt = pytest.importorskip("crypt")
    hashed: str = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
    return hashed


def test_push_to_a_registry_that_wants_credentials(
        engine: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials from ``--creds`` or the environment log in (in an auth file, never on
    skopeo's command line); wrong ones are refused without being echoed."""
    _need("skopeo")
    (tmp_path / "htpasswd").write_text(f"robot:{_bcrypt('hunter22-right')}\n")
    auth = f"auth:\n  htpasswd:\n    realm: hutch\n    path: {tmp_path / 'htpasswd'}\n"
    with _serve_registry(tmp_path, auth) as address:
        image = engine["default_image"]
        r = hutch_cli("image", "push", image, f"{address}/private:1", "--creds",
                      "robot:hunter22-wrong")
        err = r.stderr.decode()
        assert r.returncode == 125 and "ImageBuildError" in err and "hunter22" not in err, err
        monkeypatch.setenv("REGISTRY_USERNAME", "robot")
        monkeypatch.setenv("REGISTRY_PASSWORD", "hunter22-right")
        r = hutch_cli("image", "push", image, f"{address}/private:1", timeout=600)
        assert r.returncode == 0, r.stderr.decode()
        tags = httpx.get(f"http://{address}/v2/private/tags/list", timeout=30,
                         auth=("robot", "hunter22-right"))
        assert tags.json()["tags"] == ["1"]

        # pulls log in with a Secret, as Modal's from_registry and FROM lines take it
        wrong = hutch.Secret.from_dict({"REGISTRY_USERNAME": "robot",
                                        "REGISTRY_PASSWORD": "hunter22-wrong"})
        with pytest.raises(hutch.exception.ImageBuildError) as info:
            hutch.Image.from_registry(f"{address}/private:1", wrong).build()
        assert "hunter22" not in str(info.value)
        right = hutch.Secret.from_dict({"REGISTRY_USERNAME": "robot",
                                        "REGISTRY_PASSWORD": "hunter22-right"})
        (tmp_path / "Dockerfile").write_text(f"FROM {address}/private:1\n"
                                             "RUN echo from-private > /p\n")
        image = hutch.Image.from_dockerfile(tmp_path / "Dockerfile", context_dir=tmp_path,
                                            registry_secret=right)
        sb = hutch.Sandbox.create("cat", "/p", image=image, timeout=120)
        try:
            sb.wait()
            assert sb.stdout.read() == "from-private\n"
        finally:
            sb.terminate()


def test_dockerfile_from_a_registry_image_multi_stage(engine: dict[str, Any], registry: str,
                                                      tmp_path: Path) -> None:
    """An image pushed with ``hutch image push`` is a FROM line's base, as Docker Hub's
    are, in both stages of a multi-stage build."""
    tag = f"{registry}/hutch/df-base:{uuid.uuid4().hex[:8]}"
    assert hutch_cli("image", "push", engine["default_image"], tag).returncode == 0
    (tmp_path / "main.c").write_text('#include <stdio.h>\nint main(void){puts("built");}\n')
    (tmp_path / "Dockerfile").write_text(
        f"FROM {tag} AS build\nCOPY main.c /src/\nRUN gcc -o /hello /src/main.c\n"
        f"FROM {tag}\nCOPY --from=build /hello /usr/bin/\nCMD [\"hello\"]\n")
    image = hutch.Image.from_dockerfile(tmp_path / "Dockerfile", context_dir=tmp_path)
    sb = hutch.Sandbox.create(image=image, timeout=120)
    try:
        sb.wait()
        assert (sb.returncode, sb.stdout.read()) == (0, "built\n")
    finally:
        sb.terminate()


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


def test_a_snapshot_is_an_ordinary_image_to_push_and_export(
        engine: dict[str, Any], registry: str, tmp_path: Path) -> None:
    """``snapshot_filesystem`` gives an image like any other: pushed to a registry and
    pulled back, or exported as an OCI archive and loaded, it has the sandbox's state
    (a file written, and one of the image's deleted: a whiteout)."""
    _need("skopeo")
    sb = hutch.Sandbox.create(timeout=60)
    try:
        setup = sb.exec("sh", "-c", "echo from-the-sandbox > /state && rm /etc/issue")
        assert setup.wait() == 0, setup.stderr.read()
        snapshot = sb.snapshot_filesystem()
    finally:
        sb.terminate()
    assert snapshot.object_id is not None
    check = ("cat /state; test -e /etc/issue && echo issue-back || echo issue-gone")
    pushed = hutch_cli("image", "push", snapshot.object_id,
                       f"{registry}/snapshot:{uuid.uuid4().hex[:8]}", timeout=600)
    assert pushed.returncode == 0, pushed.stderr.decode()
    target = pushed.stdout.decode().split(" to ")[1].split(" (")[0]
    archive = tmp_path / "snapshot.tar"
    exported = hutch_cli("image", "export", snapshot.object_id, "-o", str(archive))
    assert exported.returncode == 0, exported.stderr.decode()
    for image in (hutch.Image.from_registry(target), hutch.Image.from_oci_archive(str(archive))):
        other = hutch.Sandbox.create(image=image, timeout=60)
        try:
            p = other.exec("sh", "-c", check)
            assert (p.stdout.read(), p.wait()) == ("from-the-sandbox\nissue-gone\n", 0)
        finally:
            other.terminate()
