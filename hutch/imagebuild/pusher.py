"""Images to a registry (``hutch image push``): skopeo copies one out of the store.

The store is a real OCI image layout (:mod:`hutch.imagebuild.layout`, each image tagged by
its ``org.opencontainers.image.ref.name``), so skopeo reads the image from it as it is
(``oci:<layout>:<ref>``) and writes it to ``docker://<dest>``: the same layer blobs, no
unpacking or repacking.  A registry on this host's loopback is reached over plain HTTP, as
for pulls (:func:`hutch.imagebuild.importer.plain_http`).

Credentials (``user:password``) reach skopeo in an auth file of the push's own (mode 0600,
removed after), not on its command line, which every user of the host can read; they are
never logged, and skopeo's messages are scrubbed of them before they become an error.
Without them skopeo uses the engine user's own logins (``skopeo login``,
``~/.docker/config.json``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from hutch.imagebuild.importer import plain_http
from hutch.imagebuild.layout import DIGEST, ImageNotFound, ImageStore
from hutch.imagebuild.registryauth import scrub, write_auth_file

__all__ = ["PushFailed", "layout_ref", "push_argv", "push_image", "registry_dest"]

_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_COMPONENT}(?:\.{_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]{{1,5}})?"
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
#: A registry reference by tag, as Docker's distribution/reference grammar has it.
REFERENCE = re.compile(rf"(?:{_DOMAIN}/)?{_PATH}(?:/{_PATH})*(?::\w[\w.-]{{0,127}})?",
                       re.ASCII)
#: The longest repository name a registry takes (distribution/reference).
MAX_NAME = 255
#: How many of skopeo's last stderr lines a failure carries.
TAIL_LINES = 10
EXAMPLE = "127.0.0.1:5000/name:tag or docker.io/me/name:1"


class PushFailed(RuntimeError):
    """skopeo is missing or could not copy the image (its message, scrubbed)."""


def registry_dest(dest: str) -> str:
    """``dest`` without a ``docker://`` prefix if it names a registry image by tag (or none:
    ``latest``); ``ValueError`` saying why not otherwise (a digest, another transport, a
    name a registry refuses)."""
    shown = repr(dest[:100] + ("..." if len(dest) > 100 else ""))
    bare = dest.removeprefix("docker://")
    if "@" in bare:
        raise ValueError(f"a push destination is a tag, not a digest: {shown}")
    name = bare.rsplit(":", 1)[0] if ":" in bare.rsplit("/", 1)[-1] else bare
    if not REFERENCE.fullmatch(bare) or len(name) > MAX_NAME:
        raise ValueError(f"not a registry reference to push to: {shown} (expected e.g. "
                         f"{EXAMPLE}, optionally with docker://)")
    return bare


def layout_ref(store: ImageStore, ref: str) -> str:
    """The name skopeo finds ``ref`` by in the layout: ``ref`` itself, or for a manifest
    digest a reference tagged with it; :class:`ImageNotFound` if the store has neither."""
    refs = store.refs()
    if ref in refs:
        return ref
    if DIGEST.fullmatch(ref):
        tagged = sorted(name for name, digest in refs.items() if digest == ref)
        if tagged:
            return tagged[0]
    raise ImageNotFound(ref)


def push_argv(layout: Path, ref: str, dest: str, auth_file: Path | None,
              digest_file: Path) -> list[str]:
    """skopeo's command line for a push of ``ref`` (in ``layout``) to ``dest``."""
    argv = ["skopeo", "copy", "--quiet", "--digestfile", str(digest_file)]
    if plain_http(dest):
        argv.append("--dest-tls-verify=false")
    if auth_file is not None:
        argv += ["--dest-authfile", str(auth_file)]
    return [*argv, f"oci:{layout}:{ref}", f"docker://{dest}"]


def push_image(store: ImageStore, ref: str, dest: str, credentials: str | None = None) -> str:
    """Copy the image ``ref`` to the registry reference ``dest`` (see :func:`registry_dest`);
    returns the digest of the manifest the registry now has."""
    name = layout_ref(store, ref)
    dest = registry_dest(dest)
    if shutil.which("skopeo") is None:
        raise PushFailed("skopeo is not installed: apt-get install skopeo")
    work = Path(tempfile.mkdtemp(dir=store.tmp, prefix="push-"))
    try:
        digest_file, auth_file = work / "digest", None
        if credentials:
            auth_file = work / "auth.json"
            write_auth_file(auth_file, dest, credentials)
        proc = subprocess.run(push_argv(store.root, name, dest, auth_file, digest_file),
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines()[-TAIL_LINES:]
            tail = scrub("\n".join(lines), credentials) or f"exit status {proc.returncode}"
            raise PushFailed(f"skopeo could not push {ref} to {dest}: {tail}")
        digest = digest_file.read_text().strip() if digest_file.exists() else ""
        return digest if DIGEST.fullmatch(digest) else ""
    finally:
        shutil.rmtree(work, ignore_errors=True)
