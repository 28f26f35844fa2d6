"""hutch.sdk.transport after an engine crash: what is sent again, and what is not.

A small HTTP server on a real Unix socket plays an engine that dies under the first
request to ``/v1/x`` (it reads the request, then closes the connection without a byte of
answer) and answers everything else.  A GET is sent again and succeeds; a POST the dead
engine may have acted on is not repeated, and fails with ``EngineRestartedError``.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from hutch import exception
from hutch.api.models import API_VERSION
from hutch.sdk.transport import EngineClient


class DyingEngine:
    """Serves the socket in a thread; drops the first request to ``/v1/x`` unanswered."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.seen: list[str] = []  # "METHOD /path" of every request to /v1/x
        self.dropped = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, data = data.partition(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method, target = lines[0].split()[:2]
                length = next((int(line.split(":")[1]) for line in lines[1:]
                               if line.lower().startswith("content-length:")), 0)
                while len(data) < length:
                    data += conn.recv(65536)
                data = data[length:]
                if target == "/v1/health":
                    body = {"status": "ok", "api_version": API_VERSION}
                else:
                    self.seen.append(f"{method} {target}")
                    if not self.dropped:
                        self.dropped = True
                        return  # the engine "dies": the connection closes, unanswered
                    body = {"ok": True}
                payload = json.dumps(body).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def dying_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DyingEngine]:
    monkeypatch.setenv("HUTCH_RUNTIME_DIR", str(tmp_path))
    server = DyingEngine(tmp_path / "engine.sock")
    yield server
    server.close()


def _call(method: str) -> object:
    async def call() -> object:
        client = EngineClient()
        try:
            return await client.request(method, "/v1/x", json_body={} if method == "POST"
                                        else None)
        finally:
            await client.aclose()

    return trio.run(call)


def test_a_get_the_engine_died_under_is_sent_again(dying_engine: DyingEngine) -> None:
    assert _call("GET") == {"ok": True}
    assert dying_engine.seen == ["GET /v1/x", "GET /v1/x"]


def test_a_post_the_engine_may_have_received_is_not_repeated(
        dying_engine: DyingEngine) -> None:
    with pytest.raises(exception.EngineRestartedError, match="may or may not"):
        _call("POST")
    assert dying_engine.seen == ["POST /v1/x"]  # sent once, never again
    assert _call("POST") == {"ok": True}  # the next call reaches the (new) engine
    assert isinstance(exception.EngineRestartedError("x"), exception.ConnectionError)
