"""Dockerfiles of the common shapes build on the engine and run.

``FROM`` names the engine's default image through a build argument (``BASE``), as a
Dockerfile names a local image; ``test_image_interop`` covers ``FROM`` a registry.
"""

from __future__ import annotations

import http.server
import io
import os
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest

import hutch
from hutch.exception import InvalidError
from tests.helpers import image_output

_out = image_output


def _dockerfile(tmp_path: Path, text: str, files: dict[str, str] | None = None) -> Path:
    for name, content in (files or {}).items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    (tmp_path / "Dockerfile").write_text(text)
    return tmp_path / "Dockerfile"


def test_multi_stage_c_program(engine: dict[str, Any], tmp_path: Path) -> None:
    dockerfile = _dockerfile(tmp_path, """\
ARG BASE
FROM ${BASE} AS build
WORKDIR /src
COPY hello.c .
RUN gcc -O2 -static -o /out-hello hello.c
FROM build AS tested
RUN /out-hello > /tested.txt
FROM $BASE
COPY --from=build /out-hello /usr/local/bin/hello
COPY --from=tested /tested.txt /opt/
CMD ["hello"]
""", {"hello.c": '#include <stdio.h>\nint main(void){puts("hello from C");return 0;}\n'})
    image = hutch.Image.from_dockerfile(dockerfile, context_dir=tmp_path,
                                        build_args={"BASE": engine["default_image"]})
    out = _out(image, "hello && cat /opt/tested.txt && test ! -e /src/hello.c && echo clean")
    assert out == "hello from C\nhello from C\nclean\n"


def test_python_app_with_requirements(engine: dict[str, Any], tmp_path: Path) -> None:
    dockerfile = _dockerfile(tmp_path, """\
ARG BASE
FROM $BASE
WORKDIR /app
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt
COPY app/ ./
ENTRYPOINT ["python", "main.py"]
""", {"requirements.txt": "six==1.16.0\n",
        "app/main.py": "import six, sys\nprint('six', six.__version__, *sys.argv[1:])\n"})
    image = hutch.Image.from_dockerfile(dockerfile, context_dir=tmp_path,
                                        build_args={"BASE": engine["default_image"]})
    sb = hutch.Sandbox.create("arg", image=image, timeout=120)  # the entrypoint runs
    try:
        sb.wait()
        assert sb.returncode == 0
        assert sb.stdout.read() == "six 1.16.0 arg\n"
    finally:
        sb.terminate()


def test_arg_env_workdir_substitution(engine: dict[str, Any], tmp_path: Path) -> None:
    dockerfile = _dockerfile(tmp_path, """\
ARG BASE
ARG VERSION=1.0
FROM $BASE
ARG VERSION
ARG NAME=default
ENV APP_VERSION=$VERSION APP_NAME="${NAME}-app" PATH=/opt/app/bin:$PATH
ENV GREETING hello world
WORKDIR /opt/$NAME
WORKDIR sub
RUN echo "$VERSION $NAME $(pwd)" > built.txt
""")
    image = hutch.Image.from_dockerfile(dockerfile, context_dir=tmp_path, build_args={
        "BASE": engine["default_image"], "NAME": "demo"})
    out = _out(image, 'echo "$APP_VERSION|$APP_NAME|$GREETING|$PATH|$VERSION|$(pwd)"; '
               "cat /opt/demo/sub/built.txt")
    lines = out.splitlines()
    assert lines[0].startswith("1.0|demo-app|hello world|/opt/app/bin:/usr/local/sbin:")
    assert lines[0].endswith("||/opt/demo/sub")  # ARGs are not in the image's environment
    assert lines[1] == "1.0 demo /opt/demo/sub"


def test_dockerignore_and_copy_flags(engine: dict[str, Any], tmp_path: Path) -> None:
    dockerfile = _dockerfile(tmp_path, """\
ARG BASE
FROM $BASE
COPY . /ctx/
COPY --chown=nobody:nogroup --chmod=600 secret.cfg /etc/app.cfg
COPY src/*.py /globbed/
USER nobody
RUN id -un > /tmp/builder && touch /tmp/made-by-user
""", {".dockerignore": "node_modules\n*.log\n!keep.log\n**/__pycache__\n",
        "node_modules/x.js": "x", "a.log": "a", "keep.log": "k", "secret.cfg": "s",
        "src/m.py": "m", "src/n.py": "n", "src/notes.txt": "t", "src/pkg/__pycache__/c.pyc": "c"})
    image = hutch.Image.from_dockerfile(dockerfile, context_dir=tmp_path,
                                        build_args={"BASE": engine["default_image"]})
    out = _out(image, "cd /ctx && find . -type f | sort && stat -c '%U:%G %a' /etc/app.cfg && "
               "ls /globbed && cat /tmp/builder && stat -c %U /tmp/made-by-user")
    assert out.split() == [
        "./.dockerignore", "./Dockerfile", "./keep.log", "./secret.cfg", "./src/m.py",
        "./src/n.py", "./src/notes.txt", "nobody:nogroup", "600", "m.py", "n.py", "nobody",
        "nobody"]


def test_cache_mounts_persist_between_builds_and_stay_out_of_the_layer(
        engine: dict[str, Any], tmp_path: Path) -> None:
    base = hutch.Image.from_id(engine["default_image"])
    mark = os.urandom(4).hex()
    first = base.dockerfile_commands(
        [f"RUN --mount=type=cache,target=/var/cache/t{mark} echo one > /var/cache/t{mark}/seen"])
    second = base.dockerfile_commands(
        [f"RUN --mount=type=cache,target=/var/cache/t{mark} cat /var/cache/t{mark}/seen "
         "> /copied"])
    first.build()
    out = _out(second, f"cat /copied; ls -A /var/cache/t{mark} | wc -l")
    assert out == "one\n0\n"


def test_add_unpacks_local_archives_and_downloads_urls(engine: dict[str, Any],
                                                       tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "bundle.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("inner/file.txt")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"inside"))
    served = tmp_path / "www"
    served.mkdir()
    (served / "remote.txt").write_text("downloaded")
    with _http_server(served) as url:
        dockerfile = _dockerfile(tmp_path, f"ARG BASE\nFROM $BASE\nADD bundle.tar.gz /b/\n"
                                 f"ADD {url}/remote.txt /r/\nADD {url}/remote.txt /named.txt\n")
        image = hutch.Image.from_dockerfile(dockerfile, context_dir=tmp_path,
                                            build_args={"BASE": engine["default_image"]})
    assert _out(image, "cat /b/inner/file.txt /r/remote.txt /named.txt") == \
        "insidedownloadeddownloaded"


class _http_server:
    def __init__(self, root: Path) -> None:
        def handler(*args: Any) -> http.server.SimpleHTTPRequestHandler:
            return http.server.SimpleHTTPRequestHandler(*args, directory=str(root))

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_each_instruction_is_a_cached_step(engine: dict[str, Any], tmp_path: Path,
                                           capfd: pytest.CaptureFixture[str]) -> None:
    mark = os.urandom(4).hex()
    text = f"ARG BASE\nFROM $BASE\nRUN echo {mark} > /a\nENV X=1\nRUN echo two > /b\n"
    dockerfile = _dockerfile(tmp_path, text)
    args = {"BASE": engine["default_image"]}
    hutch.Image.from_dockerfile(dockerfile, context_dir=tmp_path, build_args=args).build()
    (tmp_path / "Dockerfile").write_text(text.replace("echo two", "echo three"))
    capfd.readouterr()
    with hutch.enable_output():
        image = hutch.Image.from_dockerfile(dockerfile, context_dir=tmp_path,
                                            build_args=args).build()
    err = capfd.readouterr().err
    assert f"CACHED Dockerfile:3 RUN echo {mark}" in err
    assert "CACHED CONFIG X=1" in err or "CACHED CONFIG env" in err
    assert "] Dockerfile:5 RUN echo three" in err and "CACHED Dockerfile:5" not in err
    assert _out(image, "cat /a /b") == f"{mark}\nthree\n"


@pytest.mark.parametrize(("text", "line", "what"), [
    ("FROM x\nRUN true\nHEALTHCHECK CMD true\n", 3, "HEALTHCHECK"),
    ("FROM x\nVOLUME /data\n", 2, "VOLUME"),
    ("FROM x\n\nRUN --mount=type=secret,id=a cat /run/secrets/a\n", 3, "type=secret"),
    ("RUN true\n", 1, "starts with FROM"),
    ("FROM x\nCOPY missing.txt /\n", 2, "missing.txt"),
    ("FROM x\nCOPY a b c\n", 2, "must be a directory"),
    ("FROM x\nCOPY ../outside /\n", 2, "outside the build context"),
    ("FROM x\nSHELL /bin/bash -c\n", 2, "JSON form"),
    ("FROM --platform=linux/s390x x\n", 1, "platform"),
])
def test_unsupported_and_wrong_lines_name_their_line(tmp_path: Path, text: str, line: int,
                                                     what: str) -> None:
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    with pytest.raises(InvalidError, match=rf"line {line}\b.*{what}|{what}.*line {line}\b"):
        hutch.Image.from_dockerfile(_dockerfile(tmp_path, text), context_dir=tmp_path)


def test_copy_cannot_follow_a_link_out_of_the_context(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to("/etc")
    with pytest.raises(InvalidError, match="outside the build context"):
        hutch.Image.from_dockerfile(_dockerfile(tmp_path, "FROM x\nCOPY link/passwd /\n"),
                                    context_dir=tmp_path)


def test_dockerfile_commands_extend_an_image(engine: dict[str, Any]) -> None:
    image = hutch.Image.from_id(engine["default_image"]).dockerfile_commands(
        "ENV GREETING=hi", ["RUN echo $GREETING > /g", 'CMD ["cat", "/g"]'])
    assert _out(image, "cat /g; echo $GREETING") == "hi\nhi\n"


def test_dockerfile_images_iterate(tmp_path: Path) -> None:
    """A missing Dockerfile is an InvalidError, not an OSError."""
    with pytest.raises(InvalidError, match="cannot read the Dockerfile"):
        hutch.Image.from_dockerfile(tmp_path / "nope")


def test_copy_from_a_stage_takes_directories_and_single_files(engine: dict[str, Any],
                                                              tmp_path: Path) -> None:
    """A directory's contents go into the destination (also a directory holding one
    file), a single file becomes the destination path, as ``docker build`` does."""
    dockerfile = _dockerfile(tmp_path, """\
ARG BASE
FROM ${BASE} AS build
RUN mkdir -p /out/dist/sub /out/one && echo a > /out/dist/a && echo b > /out/dist/sub/b \\
    && echo only > /out/one/only.txt && echo f > /out/file.txt
FROM $BASE
COPY --from=build /out/dist /srv
COPY --from=build /out/one /one
COPY --from=build /out/file.txt /etc/renamed.conf
COPY --from=build /out/dist/ /srv2/
""")
    image = hutch.Image.from_dockerfile(dockerfile, context_dir=tmp_path,
                                        build_args={"BASE": engine["default_image"]})
    out = _out(image, "cd / && find srv srv2 one -type f | sort && cat /etc/renamed.conf")
    assert out.split() == ["one/only.txt", "srv/a", "srv/sub/b", "srv2/a", "srv2/sub/b", "f"]


def test_heredocs_keep_their_shebang_and_comments(engine: dict[str, Any],
                                                  tmp_path: Path) -> None:
    dockerfile = _dockerfile(tmp_path, """\
ARG BASE
FROM $BASE
RUN <<EOF
#!/usr/bin/env python3
# a Python comment, and a blank line below

import sys
open("/py.txt", "w").write(f"python {sys.version_info[0]}\\n")
EOF
COPY <<CONF /etc/app.conf
# kept
key = 1
CONF
""")
    image = hutch.Image.from_dockerfile(dockerfile, context_dir=tmp_path,
                                        build_args={"BASE": engine["default_image"]})
    assert _out(image, "cat /py.txt /etc/app.conf") == "python 3\n# kept\nkey = 1\n"
