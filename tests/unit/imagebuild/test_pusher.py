"""hutch.imagebuild.pusher: push destinations, skopeo's command line, credentials kept out
of errors (skopeo itself is a stand-in script here; the integration tests push for real)."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from hutch.imagebuild import pusher, registryauth
from hutch.imagebuild.layout import ImageNotFound, ImageStore

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("dest", "bare"), [
    ("127.0.0.1:5000/name:tag", "127.0.0.1:5000/name:tag"),
    ("docker://127.0.0.1:5000/a/b/c:1.0", "127.0.0.1:5000/a/b/c:1.0"),
    ("docker.io/me/x:1", "docker.io/me/x:1"),
    ("me/x", "me/x"),
    ("localhost/x_y.z-w:Latest_1", "localhost/x_y.z-w:Latest_1"),
    ("[::1]:5000/x:1", "[::1]:5000/x:1"),
    ("ghcr.io/org/my--image:v1.2.3", "ghcr.io/org/my--image:v1.2.3"),
])
def test_a_registry_reference_is_a_destination(dest: str, bare: str) -> None:
    assert pusher.registry_dest(dest) == bare


@pytest.mark.parametrize(("dest", "why"), [
    ("", "not a registry reference"),
    ("docker://", "not a registry reference"),
    ("127.0.0.1:5000/Name:tag", "not a registry reference"),
    ("127.0.0.1:5000/name:", "not a registry reference"),
    ("127.0.0.1:5000/name:-tag", "not a registry reference"),
    ("127.0.0.1:5000/name:" + "t" * 129, "not a registry reference"),
    ("127.0.0.1:5000//name", "not a registry reference"),
    ("oci:/tmp/layout:tag", "not a registry reference"),
    ("oci-archive:/tmp/x.tar", "not a registry reference"),
    ("/abs/path:1", "not a registry reference"),
    ("host/name:tag extra", "not a registry reference"),
    ("host/na\u00efve:1", "not a registry reference"),
    ("host/name\n:1", "not a registry reference"),
    ("host/" + "a" * 300 + ":1", "not a registry reference"),
    (f"host/name@{DIGEST}", "a tag, not a digest"),
])
def test_anything_else_is_refused_saying_why(dest: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as info:
        pusher.registry_dest(dest)
    assert len(str(info.value)) < 300  # a long input is cut short in the message


def test_skopeo_command_line(tmp_path: Path) -> None:
    layout, digest_file = tmp_path / "oci", tmp_path / "digest"
    assert pusher.push_argv(layout, "hutch/step:x", "127.0.0.1:5000/n:1", None, digest_file) == [
        "skopeo", "copy", "--quiet", "--digestfile", str(digest_file),
        "--dest-tls-verify=false", f"oci:{layout}:hutch/step:x", "docker://127.0.0.1:5000/n:1"]
    argv = pusher.push_argv(layout, "r", "docker.io/me/n:1", tmp_path / "auth.json",
                            digest_file)
    assert "--dest-tls-verify=false" not in argv
    assert argv[-4:] == ["--dest-authfile", str(tmp_path / "auth.json"), f"oci:{layout}:r",
                         "docker://docker.io/me/n:1"]
    assert "--dest-tls-verify=false" in pusher.push_argv(layout, "r", "[::1]:1/n", None,
                                                         digest_file)


@pytest.mark.parametrize(("dest", "host"), [
    ("127.0.0.1:5000/n:1", "127.0.0.1:5000"),
    ("[::1]:5000/n", "[::1]:5000"),
    ("localhost/n", "localhost"),
    ("ghcr.io/org/n:1", "ghcr.io"),
    ("Registry/n", "Registry"),
    ("me/n:1", "docker.io"),
    ("n:1", "docker.io"),
    ("index.docker.io/me/n", "docker.io"),
])
def test_credentials_are_keyed_by_the_registry_host(dest: str, host: str,
                                                     tmp_path: Path) -> None:
    assert registryauth.registry_host(dest) == host
    registryauth.write_auth_file(tmp_path / "auth.json", dest, "robot:pa:ss")
    assert json.loads((tmp_path / "auth.json").read_text()) == {
        "auths": {host: {"auth": base64.b64encode(b"robot:pa:ss").decode()}}}
    assert stat.S_IMODE((tmp_path / "auth.json").stat().st_mode) == 0o600


def test_scrub_blots_out_the_credentials_and_the_password() -> None:
    text = "auth user:s3cret! failed; password s3cret! rejected for user"
    assert registryauth.scrub(text, "user:s3cret!") == \
        "auth *** failed; password *** rejected for user"
    assert registryauth.scrub(text, None) == text
    assert registryauth.scrub("auth dTpwdw== sent", "u:pw") == "auth *** sent"
    assert registryauth.scrub("no password here", "user:") == "no password here"


def _store_with_image(tmp_path: Path) -> tuple[ImageStore, str]:
    store = ImageStore(tmp_path / "data")
    digest = store.write_image("hutch/step:abc", [], {"Env": ["A=1"]})
    return store, digest


def test_a_digest_is_pushed_by_a_reference_tagged_with_it(tmp_path: Path) -> None:
    store, digest = _store_with_image(tmp_path)
    assert pusher.layout_ref(store, "hutch/step:abc") == "hutch/step:abc"
    assert pusher.layout_ref(store, digest) == "hutch/step:abc"
    for unknown in ("hutch/step:other", DIGEST, "sha256:../../etc"):
        with pytest.raises(ImageNotFound):
            pusher.layout_ref(store, unknown)


FAKE_SKOPEO = """#!/bin/sh
printf '%s\\n' "$@" > "$FAKE_ARGV"
for arg in "$@"; do
    if [ "$prev" = --dest-authfile ]; then
        stat -c %a "$arg" > "$FAKE_ARGV.mode"; cp "$arg" "$FAKE_ARGV.auth"
    fi
    prev="$arg"
done
if [ -n "$FAKE_FAIL" ]; then
    echo "time=x level=info msg=trying" >&2
    echo "level=fatal msg=\\"authentication required for $FAKE_FAIL\\"" >&2
    exit 1
fi
while [ $# -gt 0 ]; do
    if [ "$1" = --digestfile ]; then printf '%s' "$FAKE_DIGEST" > "$2"; fi
    shift
done
"""


@pytest.fixture
def fake_skopeo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "skopeo"
    script.write_text(FAKE_SKOPEO)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ARGV", str(tmp_path / "argv"))
    monkeypatch.setenv("FAKE_DIGEST", DIGEST)
    monkeypatch.delenv("FAKE_FAIL", raising=False)
    return tmp_path / "argv"


def test_a_push_runs_skopeo_and_answers_the_pushed_digest(tmp_path: Path,
                                                          fake_skopeo: Path) -> None:
    store, digest = _store_with_image(tmp_path)
    assert pusher.push_image(store, digest, "docker://localhost:5000/x:1", "u:pw") == DIGEST
    argv = fake_skopeo.read_text().splitlines()
    assert argv[-2:] == [f"oci:{store.root}:hutch/step:abc", "docker://localhost:5000/x:1"]
    assert "--dest-tls-verify=false" in argv and "u:pw" not in "".join(argv)
    assert json.loads(Path(f"{fake_skopeo}.auth").read_text()) == {
        "auths": {"localhost:5000": {"auth": base64.b64encode(b"u:pw").decode()}}}
    assert Path(f"{fake_skopeo}.mode").read_text().strip() == "600"
    assert not list(store.tmp.iterdir())  # its scratch directory (and auth file) is gone
    pusher.push_image(store, digest, "localhost:5000/x:1")
    assert "--dest-authfile" not in fake_skopeo.read_text()


def test_a_failed_push_names_skopeos_error_without_the_credentials(
        tmp_path: Path, fake_skopeo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, _ = _store_with_image(tmp_path)
    monkeypatch.setenv("FAKE_FAIL", "robot:hunter22")
    with pytest.raises(pusher.PushFailed) as info:
        pusher.push_image(store, "hutch/step:abc", "registry.example/x:1", "robot:hunter22")
    message = str(info.value)
    assert "skopeo could not push hutch/step:abc to registry.example/x:1" in message
    assert "authentication required for ***" in message
    assert "hunter22" not in message and "--dest-tls-verify=false" not in \
        fake_skopeo.read_text()
    assert not list(store.tmp.iterdir())


def test_an_unknown_image_or_destination_fails_before_skopeo(tmp_path: Path,
                                                             fake_skopeo: Path) -> None:
    store, _ = _store_with_image(tmp_path)
    with pytest.raises(ImageNotFound):
        pusher.push_image(store, "hutch/none:1", "127.0.0.1:5000/x:1")
    with pytest.raises(ValueError, match="not a registry reference"):
        pusher.push_image(store, "hutch/step:abc", "oci:/tmp/x")
    assert not fake_skopeo.exists()


def test_without_skopeo_a_push_says_what_to_install(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    store, _ = _store_with_image(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(pusher.PushFailed, match="apt-get install skopeo"):
        pusher.push_image(store, "hutch/step:abc", "127.0.0.1:5000/x:1")


def test_a_digest_file_without_a_digest_is_an_empty_digest(tmp_path: Path, fake_skopeo: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    store, _ = _store_with_image(tmp_path)
    monkeypatch.setenv("FAKE_DIGEST", json.dumps("not a digest"))
    assert pusher.push_image(store, "hutch/step:abc", "127.0.0.1:5000/x:1") == ""
