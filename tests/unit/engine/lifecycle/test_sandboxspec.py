"""What a sandbox runs and what the engine keeps of its request
(hutch/engine/lifecycle/sandboxspec.py): the entrypoint chosen from the request, the
image's Entrypoint/Cmd or the idle default, and the environment."""

from __future__ import annotations

from pathlib import Path

from hutch.api.models import CreateSandboxRequest
from hutch.engine.lifecycle.sandboxspec import DEFAULT_ENTRYPOINT, spec_of
from hutch.imagebuild.layout import Image

LAYER = Path("/data/layers/" + "a" * 64)


def _image(**fields: object) -> Image:
    return Image(ref="r", digest="sha256:" + "b" * 64, layer_dirs=[LAYER], **fields)  # type: ignore[arg-type]


def test_no_command_anywhere_idles() -> None:
    argv, spec = spec_of(CreateSandboxRequest(), _image(), "sb-1")
    assert argv == DEFAULT_ENTRYPOINT and spec.default_entrypoint is True
    assert spec.layers == ["sha256:" + "a" * 64] and spec.workdir == "/"
    assert spec.env["HOSTNAME"] == "sb-1" and "/usr/bin" in spec.env["PATH"]


def test_request_arguments_follow_the_images_entrypoint() -> None:
    image = _image(entrypoint=["/init"], cmd=["serve"], runs_cmd=True)
    argv, spec = spec_of(CreateSandboxRequest(entrypoint=["echo", "hi"]), image, "sb-2")
    assert argv == ["/init", "echo", "hi"] and spec.default_entrypoint is False
    # without arguments, an image whose steps set a command runs it
    assert spec_of(CreateSandboxRequest(), image, "sb-2")[0] == ["/init", "serve"]
    # one that did not (a base image's Cmd, such as bash) idles
    assert spec_of(CreateSandboxRequest(), _image(cmd=["bash"]), "sb-2")[0] == \
        DEFAULT_ENTRYPOINT


def test_the_requests_env_and_workdir_win_and_volumes_are_named_once() -> None:
    image = _image(env={"PATH": "/opt/bin", "A": "image"}, workdir="/srv")
    req = CreateSandboxRequest(env={"A": "request"}, volumes={
        "/a": {"name": "v"}, "/b": {"name": "v"}, "/c": {"name": "u"}})
    _, spec = spec_of(req, image, "sb-3")
    assert spec.env == {"PATH": "/opt/bin", "A": "request", "HOSTNAME": "sb-3",
                        "PYTHONUNBUFFERED": "1"}
    # Python's output unbuffered, unless the image or the request says otherwise
    buffered = _image(env={"PYTHONUNBUFFERED": ""})
    assert spec_of(CreateSandboxRequest(), buffered, "sb-3")[1].env["PYTHONUNBUFFERED"] == ""
    asked = CreateSandboxRequest(env={"PYTHONUNBUFFERED": "0"})
    assert spec_of(asked, image, "sb-3")[1].env["PYTHONUNBUFFERED"] == "0"
    assert spec.workdir == "/srv" and spec.volumes == ["u", "v"]
    assert spec_of(CreateSandboxRequest(workdir="/w"), image, "sb-3")[1].workdir == "/w"
