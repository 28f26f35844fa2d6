"""Modal's Sandboxes-guide examples, run as written against the real engine.

Each test uses ``import hutch as modal`` and Modal's own calls; ``G*`` and ``S*`` name the
examples of the "Sandboxes" and "Running commands" guides.  Every app is new, and every
sandbox still running in it is terminated when the test ends.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import pytest

import hutch as modal
from hutch.stream_type import StreamType
from tests.helpers import wait_for

ID = re.compile(r"sb-[0-9A-Za-z]{22}")


def new_app() -> modal.App:
    return modal.App.lookup(f"guide-{uuid4().hex[:8]}", create_if_missing=True)


def terminate_all(app: modal.App) -> None:
    for sb in modal.Sandbox.list(app_id=app.app_id):
        sb.terminate()


@pytest.fixture
def sb_app(engine: dict[str, Any]) -> Iterator[modal.App]:
    app = new_app()
    yield app
    terminate_all(app)


@pytest.fixture(scope="module")
def shared(engine: dict[str, Any]) -> Iterator[modal.Sandbox]:
    """One sandbox for the tests that only exec in it."""
    app = new_app()
    sb = modal.Sandbox.create(app=app, timeout=600)
    yield sb
    terminate_all(app)


# Sandboxes guide --------------------------------------------------------------------------
def test_g1_exec_read_iterate_terminate_detach(sb_app: modal.App) -> None:
    sb = modal.Sandbox.create(app=sb_app)
    p = sb.exec("python", "-c", "print('hello')", timeout=3)
    assert p.stdout.read() == "hello\n"
    p = sb.exec("bash", "-c", "for i in {1..10}; do date +%T; sleep 0.05; done", timeout=5)
    output = "".join(chunk for chunk in p.stdout)  # chunks as they arrive, by default
    assert re.fullmatch(r"(\d\d:\d\d:\d\d\n){10}", output), output
    assert p.wait() == 0
    sb.terminate()
    sb.detach()
    assert modal.Sandbox.from_id(sb.object_id).wait(raise_on_termination=False) is None


def test_g2_timeout_and_detach_leave_it_running(sb_app: modal.App) -> None:
    sb = modal.Sandbox.create(app=sb_app, timeout=10 * 60)
    sb.detach()
    again = modal.Sandbox.from_id(sb.object_id)
    assert again.poll() is None
    assert again.info()["timeout"] == 600


def test_g6_return_codes(sb_app: modal.App) -> None:
    sb = modal.Sandbox.create(app=sb_app)
    p = sb.exec("sh", "-c", "exit 42")
    p.wait()
    assert p.returncode == 42
    assert sb.returncode is None
    assert sb.terminate(wait=True) == 137
    assert sb.returncode == 137


def test_g8_secret_is_visible_in_exec(sb_app: modal.App) -> None:
    secret = modal.Secret.from_dict({"MY_SECRET": "hello"})
    sb = modal.Sandbox.create(secrets=[secret], app=sb_app)
    p = sb.exec("bash", "-c", "echo $MY_SECRET")
    assert p.stdout.read() == "hello\n"
    sb.detach()


def test_g10_enable_output_shows_the_image_build(
        sb_app: modal.App, capfd: pytest.CaptureFixture[str]) -> None:
    with modal.enable_output():
        sb = modal.Sandbox.create(image=modal.Image.debian_slim(), app=sb_app)
    assert "Built image" in capfd.readouterr().err
    assert sb.exec("true").wait() == 0
    modal.Sandbox.create(image=modal.Image.debian_slim(), app=sb_app)
    assert "Built image" not in capfd.readouterr().err  # quiet without enable_output


def test_g11_entrypoint_args_and_stdout_by_line(sb_app: modal.App) -> None:
    code = "import sys\nfor w in ['one', 'two', 'three']: print(w)\nprint('err', file=sys.stderr)"
    sb = modal.Sandbox.create("python3", "-c", code, app=sb_app, timeout=10)
    assert list(sb.stdout) == ["one\n", "two\n", "three\n"]
    assert list(sb.stderr) == ["err\n"]
    sb.wait()
    assert sb.returncode == 0
    sb.detach()


def test_g11b_a_python_servers_banner_shows_before_the_timeout(sb_app: modal.App) -> None:
    """The guide's entrypoint example: its text promises the server's output; Python
    writes it unbuffered in sandboxes (PYTHONUNBUFFERED=1), so the banner comes at once
    rather than never (the timeout kills the process with its buffer)."""
    sb = modal.Sandbox.create("python", "-m", "http.server", "8080", app=sb_app, timeout=10)
    seen = []
    for line in sb.stdout:
        seen.append(line)
        if line.startswith("Serving HTTP on"):
            break
    assert seen and seen[-1].startswith("Serving HTTP on 0.0.0.0 port 8080"), seen
    assert sb.poll() is None  # well before its 10 s
    sb.terminate()


def test_g12_object_id_detach_from_id(sb_app: modal.App) -> None:
    sb = modal.Sandbox.create(app=sb_app)
    sb_id = sb.object_id
    assert ID.fullmatch(sb_id)
    sb.detach()
    sb2 = modal.Sandbox.from_id(sb_id)
    assert sb2.object_id == sb_id
    p = sb2.exec("echo", "hello")
    assert p.stdout.read() == "hello\n"
    sb2.terminate()
    sb2.detach()
    assert modal.Sandbox.from_id(sb_id).wait(raise_on_termination=False) is None


def test_g13_names_are_unique_while_running(sb_app: modal.App) -> None:
    sb1 = modal.Sandbox.create(app=sb_app, name="my-name")
    with pytest.raises(modal.exception.AlreadyExistsError):
        modal.Sandbox.create(app=sb_app, name="my-name")
    other_app = new_app()  # the same name in another app is another sandbox
    try:
        modal.Sandbox.create(app=other_app, name="my-name")
    finally:
        terminate_all(other_app)
    sb1.terminate(wait=True)
    sb3 = modal.Sandbox.create(app=sb_app, name="my-name")
    assert sb3.object_id != sb1.object_id
    assert sb3.name == "my-name"


def test_g14_from_name(sb_app: modal.App) -> None:
    sb1 = modal.Sandbox.create(app=sb_app, name="my-name")
    assert sb_app.name is not None
    sb2 = modal.Sandbox.from_name(sb_app.name, "my-name")
    assert sb1.object_id == sb2.object_id
    sb1.terminate(wait=True)
    with pytest.raises(modal.exception.NotFoundError):  # running sandboxes only
        modal.Sandbox.from_name(sb_app.name, "my-name")


def test_g15_tags_and_list(sb_app: modal.App) -> None:
    # The guide sleeps 10 and 20 s; longer here so neither ends while the test lists them.
    s1 = modal.Sandbox.create("sleep", "100", app=sb_app)
    s2 = modal.Sandbox.create("sleep", "200", app=sb_app)
    s1.set_tags({"major_version": "1", "minor_version": "1"})
    s2.set_tags({"major_version": "1", "minor_version": "2"})
    assert s1.get_tags() == {"major_version": "1", "minor_version": "1"}

    def ids(**kwargs: Any) -> set[str]:
        return {sb.object_id for sb in modal.Sandbox.list(app_id=sb_app.app_id, **kwargs)}

    assert ids() == {s1.object_id, s2.object_id}
    assert ids(tags={"major_version": "1"}) == {s1.object_id, s2.object_id}
    assert ids(tags={"major_version": "1", "minor_version": "2"}) == {s2.object_id}
    assert ids(tags={"major_version": "2"}) == set()
    s2.set_tags({})  # replaces the whole set
    assert s2.get_tags() == {}
    assert ids(tags={"major_version": "1"}) == {s1.object_id}
    s1.terminate(wait=True)
    assert ids() == {s2.object_id}  # running sandboxes only


def test_g16_detach_does_not_stop_it(sb_app: modal.App) -> None:
    sb = modal.Sandbox.create(app=sb_app)
    sb.detach()
    assert modal.Sandbox.from_id(sb.object_id).poll() is None


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"volumes": {"/data": object()}}, "volumes"),  # G7 with something not a Volume
    ({"gpu": "a10g"}, "gpu"),
    ({"cpu": -1.0}, "cpu"),  # supported, but not a negative share
    ({"h2_ports": [8080]}, "h2_ports"),
])
def test_g3_g4_g7_unsupported_parameters(sb_app: modal.App, kwargs: dict[str, Any],
                                         named: str) -> None:
    with pytest.raises(modal.exception.InvalidError, match=f"`{named}`"):
        modal.Sandbox.create(app=sb_app, **kwargs)
    assert list(modal.Sandbox.list(app_id=sb_app.app_id)) == []


def test_g7_custom_image_and_volume(sb_app: modal.App) -> None:
    """G7: a custom image (pandas) and a volume."""
    name = f"data-volume-{uuid4().hex[:8]}"
    volume = modal.Volume.from_name(name, create_if_missing=True)
    try:
        sb = modal.Sandbox.create(image=modal.Image.debian_slim().pip_install("pandas"),
                                  volumes={"/data": volume}, app=sb_app)
        p = sb.exec("python", "-c", "import pandas; df = pandas.DataFrame({'a': [1, 2]}); "
                    "df.to_csv('/data/a.csv'); print(df.a.sum())")
        assert (p.stdout.read(), p.wait()) == ("3\n", 0), p.stderr.read()
        sb.terminate(wait=True)
        assert b"".join(volume.read_file("a.csv")).startswith(b",a\n")
    finally:
        modal.Volume.delete(name)


def test_block_network(sb_app: modal.App) -> None:
    with pytest.raises(modal.exception.InvalidError,
                       match=r"^Cannot specify open ports when `block_network` is enabled$"):
        modal.Sandbox.create(app=sb_app, block_network=True, encrypted_ports=[1])
    sb = modal.Sandbox.create("python3", "-c", "import socket; print(socket.if_nameindex())",
                              app=sb_app, block_network=True)
    assert sb.stdout.read() == "[(1, 'lo')]\n"


# Running commands guide -------------------------------------------------------------------
def test_s1_s3_exec_read_and_iterate(shared: modal.Sandbox) -> None:
    process = shared.exec("echo", "hello", timeout=3)
    assert process.stdout.read() == "hello\n"
    process = shared.exec("python", "-c", "print(1 + 1)", timeout=3)
    assert process.stdout.read() == "2\n"
    process = shared.exec(
        "bash", "-c", "for i in $(seq 1 10); do echo foo $i; sleep 0.1; done", timeout=5,
        bufsize=1)
    assert list(process.stdout) == [f"foo {i}\n" for i in range(1, 11)]
    assert process.wait() == 0
    # The reference's example of the same loop, iterated in chunks (the default bufsize).
    process = shared.exec("bash", "-c", "for i in $(seq 1 3); do echo foo $i; sleep 0.1; done")
    assert "".join(process.stdout) == "foo 1\nfoo 2\nfoo 3\n"


def test_s2_stdin(shared: modal.Sandbox) -> None:
    p = shared.exec("bash", "-c", "while read line; do echo $line; done")
    p.stdin.write(b"foo bar\n")
    p.stdin.write_eof()
    p.stdin.drain()
    assert p.wait() == 0
    assert p.stdout.read() == "foo bar\n"


def test_s2_s4_async(shared: modal.Sandbox) -> None:
    async def main() -> tuple[int, list[str], int]:
        p = await shared.exec.aio("bash", "-c", "while read line; do echo $line; done")
        p.stdin.write(b"foo bar\n")
        p.stdin.write_eof()
        await p.stdin.drain.aio()
        code = await p.wait.aio()
        q = await shared.exec.aio(
            "bash", "-c", "for i in $(seq 1 3); do echo foo $i; sleep 0.1; done", bufsize=1)
        lines = [line async for line in q.stdout]
        return code, [await p.stdout.read.aio(), *lines], await q.wait.aio()

    assert asyncio.run(main()) == (0, ["foo bar\n", "foo 1\n", "foo 2\n", "foo 3\n"], 0)


def test_s5_pipe(shared: modal.Sandbox) -> None:
    from hutch import stream_type  # Modal code imports it from modal.stream_type

    assert stream_type.StreamType is modal.StreamType is StreamType
    assert repr(StreamType.PIPE) == "hutch.stream_type.StreamType.PIPE"
    p = shared.exec("bash", "-c", "echo foo; echo bar >&2", stdout=StreamType.PIPE,
                    stderr=StreamType.PIPE)
    assert p.stdout.read() == "foo\n"
    assert p.stderr.read() == "bar\n"


def test_s5_stdout_prints_locally(shared: modal.Sandbox,
                                  capfd: pytest.CaptureFixture[str]) -> None:
    p = shared.exec("bash", "-c", "echo foo; echo bar >&2", stdout=StreamType.STDOUT,
                    stderr=StreamType.STDOUT)
    assert p.wait() == 0
    out = capfd.readouterr().out
    assert sorted(out.splitlines(keepends=True)) == ["bar\n", "foo\n"]
    with pytest.raises(modal.exception.InvalidError, match="PIPE"):
        p.stdout.read()


def test_s5_devnull(shared: modal.Sandbox) -> None:
    p = shared.exec("bash", "-c", "echo foo; echo bar >&2", stdout=StreamType.DEVNULL,
                    stderr=StreamType.DEVNULL)
    assert p.wait() == 0
    for stream in (p.stdout, p.stderr):
        with pytest.raises(ValueError, match="DEVNULL"):
            stream.read()
        with pytest.raises(ValueError, match="DEVNULL"):
            list(stream)


# Reference docstring examples --------------------------------------------------------------
def test_ref_entrypoint_read_and_wait(sb_app: modal.App) -> None:
    sandbox = modal.Sandbox.create("echo", "hello world", app=sb_app)
    assert sandbox.stdout.read() == "hello world\n"
    assert sandbox.wait() is None
    assert sandbox.returncode == 0
    assert sandbox.stdout.read() == ""  # a second read() returns empty


def test_ref_stdin(shared: modal.Sandbox) -> None:
    proc = shared.exec("cat")
    proc.stdin.write(b"foo\n")
    proc.stdin.write(b"bar\n")
    proc.stdin.write_eof()
    proc.stdin.drain()
    assert proc.stdout.read() == "foo\nbar\n"
    assert proc.wait() == 0


def test_sandbox_stdin(sb_app: modal.App) -> None:
    sb = modal.Sandbox.create("python3", "-c", "import sys; print(sys.stdin.read().upper())",
                              app=sb_app)
    sb.stdin.write("abc")
    sb.stdin.write(b" def")
    sb.stdin.write_eof()
    sb.stdin.drain()
    assert sb.stdout.read() == "ABC DEF\n"


# More of Modal's semantics ---------------------------------------------------------------
def test_exec_after_the_sandbox_ended_is_a_conflict(sb_app: modal.App) -> None:
    sb = modal.Sandbox.create(app=sb_app)
    sb.terminate(wait=True)
    with pytest.raises(modal.exception.ConflictError) as info:
        sb.exec("true")
    assert isinstance(info.value, modal.exception.InvalidError)
    finished = modal.Sandbox.create("true", app=sb_app)  # the entrypoint ended by itself
    finished.wait()
    with pytest.raises(modal.exception.ConflictError):
        finished.exec("true")


def test_returncode_and_poll(shared: modal.Sandbox) -> None:
    p = shared.exec("sh", "-c", "cat >/dev/null; exit 3")  # runs until stdin is closed
    with pytest.raises(modal.exception.InvalidError, match="wait"):
        p.returncode  # noqa: B018
    assert p.poll() is None
    with pytest.raises(modal.exception.InvalidError):
        p.returncode  # noqa: B018
    p.stdin.write_eof()
    p.stdin.drain()
    wait_for(lambda: p.poll() is not None, what="the exec to end")
    assert p.poll() == 3
    assert p.returncode == 3
    assert p.wait() == 3


def test_exec_timeout_returns_minus_one(shared: modal.Sandbox) -> None:
    p = shared.exec("sleep", "30", timeout=0.5)
    assert p.wait() == -1
    assert p.returncode == -1
    assert p.stdout.read() == ""


def test_bufsize_1_yields_whole_lines(shared: modal.Sandbox) -> None:
    script = "printf 'a\\nb\\npar'; sleep 0.2; printf 'tial\\nend'"
    p = shared.exec("sh", "-c", script, bufsize=1)
    assert list(p.stdout) == ["a\n", "b\n", "partial\n", "end"]


def test_text_false_gives_bytes(shared: modal.Sandbox) -> None:
    p = shared.exec("printf", "a\\n\\xff", text=False)
    assert p.stdout.read() == b"a\n\xff"
    q = shared.exec("printf", "b\\n", text=False)
    assert all(isinstance(chunk, bytes) for chunk in q.stdout)
    with pytest.raises(ValueError, match="line-buffering"):
        shared.exec("true", bufsize=1, text=False)


def test_relative_workdir_is_invalid(shared: modal.Sandbox, sb_app: modal.App) -> None:
    with pytest.raises(modal.exception.InvalidError, match="absolute path, got: tmp"):
        shared.exec("pwd", workdir="tmp")
    with pytest.raises(modal.exception.InvalidError, match="absolute path"):
        modal.Sandbox.create(app=sb_app, workdir="tmp")
    assert shared.exec("pwd", workdir="/tmp").stdout.read() == "/tmp\n"


def test_env_none_values_are_dropped(shared: modal.Sandbox) -> None:
    p = shared.exec("sh", "-c", 'echo "$A:${B-unset}"', env={"A": "1", "B": None})
    assert p.stdout.read() == "1:unset\n"


def test_secrets_and_env_precedence(sb_app: modal.App) -> None:
    first = modal.Secret.from_dict({"X": "s1", "Y": "s1", "Z": "s1"})
    second = modal.Secret.from_dict({"Y": "s2", "Z": "s2"})
    sb = modal.Sandbox.create(secrets=[first, second], env={"Z": "env"}, app=sb_app)
    show = 'echo "$X $Y $Z"'
    assert sb.exec("sh", "-c", show).stdout.read() == "s1 s2 env\n"
    p = sb.exec("sh", "-c", show, secrets=[second, first], env={"X": "exec-env"})
    assert p.stdout.read() == "exec-env s1 s1\n"
    p = sb.exec("sh", "-c", show, secrets=[modal.Secret.from_dict({"Y": "exec-secret"})])
    assert p.stdout.read() == "s1 exec-secret env\n"


def test_write_after_write_eof_is_an_error(shared: modal.Sandbox) -> None:
    p = shared.exec("cat")
    p.stdin.write("before\n")
    p.stdin.write_eof()
    with pytest.raises(ValueError, match="Stdin is closed"):
        p.stdin.write("after\n")
    p.stdin.drain()
    assert p.stdout.read() == "before\n"
    assert p.wait() == 0


def fill_stdin_of_wc(stdin: modal.StreamWriter, stdout: modal.StreamReader[str],
                     limit: int) -> None:
    """Fill a ``wc -c``'s stdin buffer to ``limit``, overflow it, then send one byte more."""
    stdin.write(b"x" * limit)
    with pytest.raises(BufferError):
        stdin.write(b"y")
    stdin.drain()
    stdin.write(b"y")
    stdin.write_eof()
    stdin.drain()
    assert stdout.read().strip() == str(limit + 1)


def test_exec_stdin_buffer_limit_is_16_mib(shared: modal.Sandbox) -> None:
    p = shared.exec("wc", "-c")
    fill_stdin_of_wc(p.stdin, p.stdout, 16 << 20)


def test_sandbox_stdin_buffer_limit_is_2_mib(sb_app: modal.App) -> None:
    sb = modal.Sandbox.create("wc", "-c", app=sb_app)
    fill_stdin_of_wc(sb.stdin, sb.stdout, 2 << 20)


def test_read_after_partial_iteration_returns_the_rest(sb_app: modal.App) -> None:
    sb = modal.Sandbox.create("printf", "a\\nb\\nc\\n", app=sb_app)
    lines = iter(sb.stdout)
    assert next(lines) == "a\n"
    assert sb.stdout.read() == "b\nc\n"
    assert sb.stdout.read() == ""


def test_sandbox_wait_after_terminate(sb_app: modal.App) -> None:
    sb = modal.Sandbox.create(app=sb_app)
    sb.terminate()
    with pytest.raises(modal.exception.SandboxTerminatedError):
        sb.wait()
    assert sb.wait(raise_on_termination=False) is None
    assert sb.returncode == 137
    again = modal.Sandbox.from_id(sb.object_id)
    with pytest.raises(modal.exception.SandboxTerminatedError):
        again.wait()


def test_sandbox_timeout(sb_app: modal.App) -> None:
    sb = modal.Sandbox.create("sleep", "60", app=sb_app, timeout=1)
    with pytest.raises(modal.exception.SandboxTimeoutError):
        sb.wait(raise_on_termination=False)  # a timeout raises either way
    assert sb.returncode == 124


def test_lookups_of_what_does_not_exist(sb_app: modal.App) -> None:
    with pytest.raises(modal.exception.InvalidError, match="Invalid Sandbox ID: 'bad'"):
        modal.Sandbox.from_id("bad")
    with pytest.raises(modal.exception.NotFoundError):
        modal.Sandbox.from_id("sb-" + "x" * 22)
    assert sb_app.name is not None
    with pytest.raises(modal.exception.NotFoundError):
        modal.Sandbox.from_name(sb_app.name, "no-such-sandbox")
    with pytest.raises(modal.exception.NotFoundError):
        modal.Sandbox.from_name(f"no-such-app-{uuid4().hex[:8]}", "no-such-sandbox")
    with pytest.raises(modal.exception.NotFoundError):
        modal.App.lookup("no-such-app-xyz")


def test_detached_sandbox(sb_app: modal.App) -> None:
    sb = modal.Sandbox.create("sh", "-c", "exit 3", app=sb_app)
    sb.detach()
    sb.detach()  # idempotent
    for call in (lambda: sb.exec("true"), lambda: sb.stdout, lambda: sb.stdin,
                 lambda: sb.terminate(), lambda: sb.poll(), lambda: sb.set_tags({"a": "b"}),
                 lambda: sb.get_tags()):
        with pytest.raises(modal.exception.ClientClosed):
            call()
    assert sb.wait() is None
    assert sb.returncode == 3


def verbose_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "hutch.sandbox"]


def test_verbose_logs_execs_without_secret_values(
        sb_app: modal.App, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hutch.sandbox")
    value = f"value-{uuid4().hex}"
    secret = modal.Secret.from_dict({"API_TOKEN": value, "OTHER_KEY": value})
    sb = modal.Sandbox.create(verbose=True, app=sb_app)
    p = sb.exec("printenv", "API_TOKEN", secrets=[secret])
    assert p.stdout.read() == f"{value}\n"
    [record] = verbose_records(caplog)
    message = record.getMessage()
    assert "printenv API_TOKEN" in message
    assert "OTHER_KEY" in message  # named only through the secret
    assert sb.object_id in message
    assert value not in caplog.text


def test_not_verbose_logs_nothing(sb_app: modal.App, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="hutch.sandbox")
    sb = modal.Sandbox.create(app=sb_app)
    secret = modal.Secret.from_dict({"API_TOKEN": "x"})
    assert sb.exec("true", secrets=[secret]).wait() == 0
    assert verbose_records(caplog) == []
