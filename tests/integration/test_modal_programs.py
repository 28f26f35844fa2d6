"""Programs written for Modal, in the style of Modal's sandbox examples, run unchanged with
``python -m hutch.modal PROGRAM.py``: nothing here imports hutch, only ``modal``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import hutch

AGENT_TOOL_LOOP = '''
import sys
import modal

# Declared at import, before it exists: Modal resolves a named secret where it is used.
api_key = modal.Secret.from_name("tool-loop-key", required_keys=["TOOL_TOKEN"])
modal.Secret.objects.create("tool-loop-key", {"TOOL_TOKEN": "tok-123"}, allow_existing=True)

image = modal.Image.debian_slim()
app = modal.App("agent-tool-loop", image=image, secrets=[api_key])

TOOLS = {
    "list": ["ls", "/"],
    "write": ["sh", "-c", "echo 'print(6 * 7)' > /tmp/answer.py"],
    "run": ["python3", "/tmp/answer.py"],
    "token": ["sh", "-c", "echo ${TOOL_TOKEN:-missing}"],
}

with app.run():
    sb = modal.Sandbox.create(app=app, image=image, secrets=[api_key], timeout=120)
    for step in ["list", "write", "run", "token"]:
        p = sb.exec(*TOOLS[step], timeout=30)
        out = p.stdout.read().strip().splitlines()
        print(step, p.wait(), out[-1] if out else "")
    try:
        sb.filesystem.read_text("/no/such/file")
    except modal.exception.NotFoundError:
        print("missing file caught as NotFoundError")
    except FileNotFoundError:
        print("missing file caught as FileNotFoundError")
    try:
        modal.Secret.from_name("never-made").hydrate()
    except modal.exception.NotFoundError as exc:
        print("unknown secret:", type(exc).__name__)
print("after run:", sb.poll())
'''

CODE_INTERPRETER = '''
import json
import modal

DRIVER = """
import json, sys, io, contextlib
scope = {}
for line in sys.stdin:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(json.loads(line)["code"], scope)
    print(json.dumps({"stdout": out.getvalue()}), flush=True)
"""

app = modal.App.lookup("code-interpreter", create_if_missing=True)
sb = modal.Sandbox.create("python3", "-c", DRIVER, app=app, timeout=120)

def run(code):
    sb.stdin.write(json.dumps({"code": code}) + "\\n")
    sb.stdin.drain()
    return json.loads(next(iter(sb.stdout)))["stdout"]

print(run("x = 40").strip() or "(nothing)")
print(run("x += 2; print(x)").strip())
print(run("import math; print(math.isqrt(x * x))").strip())
sb.stdin.write_eof()
sb.stdin.drain()
sb.wait()
print("exit", sb.returncode)
'''


TUNNEL_POLL = '''
import time
import urllib.error
import urllib.request

import modal

app = modal.App.lookup("tunnel-poll", create_if_missing=True)
# a server that takes a while to start, as a notebook server does
sb = modal.Sandbox.create(
    "sh", "-c", "sleep 2; exec python3 -m http.server 8443 --directory /etc",
    encrypted_ports=[8443], app=app, timeout=120)
url = sb.tunnels()[8443].url
seen = set()
deadline = time.time() + 60
while time.time() < deadline:
    try:
        with urllib.request.urlopen(url + "/hostname", timeout=5) as response:
            print("answered", response.status, response.read().decode().strip() == sb.object_id)
            break
    except urllib.error.HTTPError as exc:
        seen.add(exc.code)
    except urllib.error.URLError as exc:
        seen.add(type(exc.reason).__name__)
    time.sleep(0.2)
print("before", sorted(seen, key=str))
print("scheme", url.split(":")[0])
sb.terminate()
'''


ENTRYPOINT = '''
import modal

app = modal.App("entrypoint-demo")


@app.function(timeout=60)
def double(x):
    return 2 * x


@app.local_entrypoint()
def main(times: int = 1, shout: bool = False):
    sb = modal.Sandbox.create(app=app, timeout=120)
    out = sb.exec("sh", "-c", f"for i in $(seq {times}); do echo hello; done").stdout.read()
    text = " ".join(out.split())
    print(text.upper() if shout else text)
    print("local", double.local(21))
    try:
        double.remote(1)
    except modal.exception.InvalidError:
        print("remote refused")
    with open("sandbox_id", "w") as f:
        f.write(sb.object_id)


if __name__ == "__main__":
    print("not under modal run")
'''


def _run(tmp_path: Path, source: str, *args: str, before: tuple[str, ...] = ()
         ) -> subprocess.CompletedProcess[str]:
    program = tmp_path / "program.py"
    program.write_text(textwrap.dedent(source))
    env = {k: v for k, v in os.environ.items() if k != "HUTCH_AS_MODAL"}
    return subprocess.run([sys.executable, "-m", "hutch.modal", *before, str(program), *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)


def test_an_agent_tool_loop_with_a_named_secret_and_app_run(
        engine: dict[str, Any], tmp_path: Path) -> None:
    done = _run(tmp_path, AGENT_TOOL_LOOP)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("list 0 ") and lines[1] == "write 0 "
    assert lines[2:4] == ["run 0 42", "token 0 tok-123"]
    assert lines[4] == "missing file caught as FileNotFoundError"  # (not a NotFoundError)
    assert lines[5] == "unknown secret: NotFoundError"
    assert lines[6] == "after run: 137"  # app.run() ended: its sandbox was terminated
    hutch.Secret.objects.delete("tool-loop-key")


def test_a_stateful_code_interpreter_over_stdin_and_stdout(
        engine: dict[str, Any], tmp_path: Path) -> None:
    done = _run(tmp_path, CODE_INTERPRETER)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["(nothing)", "42", "42", "exit 0"]


def test_the_secret_value_shows_nowhere_but_in_the_sandbox(
        engine: dict[str, Any], tmp_path: Path) -> None:
    value = "hutch-named-secret-value-7d1f"
    hutch.Secret.objects.create("shown-nowhere", {"NAMED_VALUE": value}, allow_existing=True)
    try:
        sb = hutch.Sandbox.create(secrets=[hutch.Secret.from_name("shown-nowhere")],
                                  timeout=60, name="secret-holder")
        try:
            assert sb.exec("sh", "-c", "echo $NAMED_VALUE").stdout.read() == value + "\n"
            listing = subprocess.run([sys.executable, "-m", "hutch", "ps"],
                                     capture_output=True, text=True, timeout=60)
            secrets = subprocess.run([sys.executable, "-m", "hutch", "secret", "list"],
                                     capture_output=True, text=True, timeout=60)
            assert "secret-holder" in listing.stdout and "shown-nowhere" in secrets.stdout
            assert value not in listing.stdout + secrets.stdout + repr(sb) + str(
                hutch.Secret.from_name("shown-nowhere"))
            assert hutch.Sandbox.from_name("default", "secret-holder").object_id == sb.object_id
        finally:
            sb.terminate()
        again = hutch.Sandbox.from_name("default", "secret-holder", include_terminated=True)
        assert again.object_id == sb.object_id and again.poll() is not None
        with pytest.raises(hutch.exception.NotFoundError):
            hutch.Sandbox.from_name("default", "secret-holder")
    finally:
        hutch.Secret.objects.delete("shown-nowhere")


def test_a_server_behind_an_encrypted_tunnel_polled_with_urllib(
        engine: dict[str, Any], tmp_path: Path) -> None:
    """Its https URL verifies with no configuration, and before the server listens the
    tunnel answers HTTP 502 (an ``HTTPError``) rather than dropping the connection."""
    done = _run(tmp_path, TUNNEL_POLL)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["answered 200 True", "before [502]", "scheme https"]


def test_a_local_entrypoint_runs_as_under_modal_run(engine: dict[str, Any],
                                                    tmp_path: Path) -> None:
    done = _run(tmp_path, ENTRYPOINT, "--times", "2", "--shout", before=("run",))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["HELLO HELLO", "local 42", "remote refused"]
    sandbox = hutch.Sandbox.from_id((tmp_path / "sandbox_id").read_text())
    assert sandbox.poll() is not None  # app.run() ended with the entrypoint: terminated
    wrong = _run(tmp_path, ENTRYPOINT, "--times", "two", before=("run",))
    assert wrong.returncode == 2 and "invalid int value" in wrong.stderr
