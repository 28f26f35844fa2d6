"""The engine's fast path for hot calls: same answers as the app, the rest passed through."""

from __future__ import annotations

import json
from typing import Any

import trio

from hutch.api.models import ExecInfo, ExecRequest
from hutch.engine.errors import NotFound
from hutch.engine.routes import fastpath


class FakeSession:
    def __init__(self, exec_id: str, done: bool) -> None:
        self.exec_id, self.sandbox_id, self.argv = exec_id, "sb-1", ["true"]
        self.done = trio.Event()
        if done:
            self.done.set()
        self.returncode = 0 if done else None
        self.timed_out = False
        self.size: tuple[int, int] | None = None


class FakeExecs:
    """The manager's exec registry: which sessions were recorded before their answer."""

    def __init__(self) -> None:
        self.recorded: list[str] = []

    def record(self, session: FakeSession) -> None:
        self.recorded.append(session.exec_id)


class FakeManager:
    def __init__(self) -> None:
        self.requests: list[tuple[str, ExecRequest]] = []
        self.execs = FakeExecs()

    async def exec(self, sandbox_id: str, req: ExecRequest) -> FakeSession:
        self.requests.append((sandbox_id, req))
        return FakeSession("ex-1", done=False)

    async def create(self, req: Any) -> Any:
        self.requests.append(("create", req))
        raise NotFound("no image called nope")

    def exec_session(self, exec_id: str) -> FakeSession:
        if exec_id == "ex-gone":
            raise NotFound(f"no exec {exec_id}")
        return FakeSession(exec_id, done=exec_id == "ex-done")


class Recorder:
    """The inner app: records what reached it (and the whole body it could read)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.calls.append((scope["path"], body))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})


def call(method: str, path: str, body: bytes = b"", query: bytes = b"",
         chunk: int | None = None) -> tuple[FakeManager, Recorder, int, bytes]:
    manager, inner = FakeManager(), Recorder()
    app = fastpath.FastPath(inner, manager)  # type: ignore[arg-type]
    parts = [body[i:i + chunk] for i in range(0, len(body), chunk)] if chunk else [body]
    sent: list[fastpath.Message] = []

    read_all = False

    async def receive() -> fastpath.Message:
        nonlocal read_all
        if read_all:
            await trio.sleep_forever()  # as a server's receive waits for the disconnect
        piece = parts.pop(0) if parts else b""
        read_all = not parts
        return {"type": "http.request", "body": piece, "more_body": bool(parts)}

    async def send(message: fastpath.Message) -> None:
        sent.append(message)

    scope: fastpath.Scope = {"type": "http", "method": method, "path": path,
                             "query_string": query}
    trio.run(app.__call__, scope, receive, send)
    return manager, inner, sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_health() -> None:
    _, inner, status, body = call("GET", "/v1/health")
    assert status == 200 and json.loads(body)["status"] == "ok" and not inner.calls


def test_an_exec_is_started_with_the_parsed_request() -> None:
    manager, inner, status, body = call("POST", "/v1/sandboxes/sb-1/execs",
                                        b'{"argv": ["echo", "hi"], "env": {"A": "1"}}')
    assert status == 200 and not inner.calls
    (sandbox_id, req), = manager.requests
    assert sandbox_id == "sb-1" and req.argv == ["echo", "hi"] and req.env == {"A": "1"}
    info = ExecInfo.model_validate_json(body)
    assert (info.exec_id, info.state, info.returncode) == ("ex-1", "running", None)
    assert manager.execs.recorded == ["ex-1"]  # (committed before its id is answered)


def test_bad_input_goes_to_the_app_with_its_body() -> None:
    for body in (b'{"argv": []}', b"not json", b'{"argv": ["x"], "stdout": "nowhere"}'):
        manager, inner, status, _ = call("POST", "/v1/sandboxes/sb-1/execs", body)
        assert (status, inner.calls, manager.requests) == (299, [("/v1/sandboxes/sb-1/execs",
                                                                  body)], [])


def test_creates_are_parsed_here_and_bad_ones_go_to_the_app() -> None:
    manager, inner, status, body = call("POST", "/v1/sandboxes",
                                        b'{"entrypoint": ["true"], "image": "nope"}')
    assert status == 404 and not inner.calls
    assert json.loads(body) == {"type": "not_found", "message": "no image called nope"}
    (kind, req), = manager.requests
    assert (kind, req.entrypoint, req.image) == ("create", ["true"], "nope")
    for bad in (b'{"entrypoint": "true"}', b"[1", b'{"timeout": "soon"}'):
        manager, inner, status, _ = call("POST", "/v1/sandboxes", bad)
        assert (status, inner.calls, manager.requests) == (299, [("/v1/sandboxes", bad)], [])
    _, inner, status, _ = call("POST", "/v1/sandboxes", b"{}", query=b"x=1")
    assert status == 299 and inner.calls


def test_a_large_body_reaches_the_app_whole() -> None:
    body = json.dumps({"argv": ["x" * (fastpath.MAX_BODY + 200_000)]}).encode()
    _, inner, status, _ = call("POST", "/v1/sandboxes/sb-1/execs", body, chunk=65536)
    assert status == 299 and inner.calls == [("/v1/sandboxes/sb-1/execs", body)]


def test_wait_and_its_timeout() -> None:
    _, inner, status, body = call("POST", "/v1/execs/ex-done/wait", query=b"timeout=5")
    assert status == 200 and ExecInfo.model_validate_json(body).state == "exited"
    _, _, status, body = call("POST", "/v1/execs/ex-run/wait", query=b"timeout=0.01")
    assert status == 200 and ExecInfo.model_validate_json(body).state == "running"
    for bad in (b"timeout=abc", b"timeout=-1", b"timeout=nan", b"timeout=99999"):
        _, inner, status, _ = call("POST", "/v1/execs/ex-done/wait", query=bad)
        assert status == 299 and inner.calls, bad


def test_engine_errors_have_the_apps_error_body() -> None:
    _, inner, status, body = call("GET", "/v1/execs/ex-gone")
    assert status == 404 and not inner.calls
    assert json.loads(body) == {"type": "not_found", "message": "no exec ex-gone"}


def test_everything_else_goes_to_the_app() -> None:
    for method, path in (("GET", "/v1/sandboxes"), ("DELETE", "/v1/execs/ex-1"),
                         ("POST", "/v1/execs/ex-1/kill"), ("GET", "/v1/execs//wait"),
                         ("GET", "/v2/health"), ("POST", "/v1/health")):
        _, inner, status, _ = call(method, path)
        assert status == 299 and inner.calls, (method, path)


def test_exec_output_is_streamed_and_bad_parameters_go_to_the_app(monkeypatch: Any) -> None:
    async def events(session: Any, fd: int | None) -> Any:
        yield b'{"fd":1,"data":"aGk="}\n'
        yield f'{{"exit_code":0,"fd_asked":{fd or 0}}}\n'.encode()

    monkeypatch.setattr(fastpath, "exec_events", events)
    _, inner, status, body = call("GET", "/v1/execs/ex-done/output", query=b"fd=1")
    assert status == 200 and not inner.calls
    assert body.splitlines() == [b'{"fd":1,"data":"aGk="}', b'{"exit_code":0,"fd_asked":1}']
    for bad in (b"fd=3", b"fd=x", b"fd=1&fd=2", b"other=1"):
        _, inner, status, _ = call("GET", "/v1/execs/ex-done/output", query=bad)
        assert status == 299 and inner.calls, bad


def test_a_stream_stops_when_its_client_leaves() -> None:
    closed = trio.Event()

    async def forever() -> Any:
        try:
            yield b"{}\n"
            await trio.sleep_forever()
        finally:
            closed.set()

    sent: list[fastpath.Message] = []
    messages = [{"type": "http.disconnect"}]

    async def receive() -> fastpath.Message:
        await trio.sleep(0.05)
        return messages.pop(0)

    async def send(message: fastpath.Message) -> None:
        sent.append(message)

    async def main() -> None:
        with trio.fail_after(5):
            await fastpath._stream(send, receive, forever())
        assert closed.is_set()

    trio.run(main)
    assert sent[1]["body"] == b"{}\n"
