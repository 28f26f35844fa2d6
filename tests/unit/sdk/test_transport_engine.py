"""hutch.sdk.transport against a fake engine on a Unix socket: versions, lost engines, streams.

The fake is Python's own http.server on a Unix socket, so these tests need no namespaces.
"""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from hutch import exception
from hutch.sdk import transport

Route = Callable[[BaseHTTPRequestHandler], None]


def _json(handler: BaseHTTPRequestHandler, body: Any, status: int = 200) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def fake_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                ) -> Iterator[Callable[[dict[str, Route]], None]]:
    """Serve ``routes`` (path -> handler) on the socket the SDK will use."""
    monkeypatch.setenv("HUTCH_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setenv("HUTCH_DATA_DIR", str(tmp_path / "data"))
    transport.forget_clients()
    servers: list[_Server] = []

    def serve(routes: dict[str, Route]) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                routes.get(self.path.split("?")[0], lambda h: _json(h, {}, 404))(self)

            def log_message(self, *args: object) -> None:
                pass

        server = _Server(str(tmp_path / "engine.sock"), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()
    transport.forget_clients()


def _health(version: str) -> Route:
    return lambda h: _json(h, {"status": "ok", "version": "x", "api_version": version})


def test_an_engine_of_another_api_version_is_a_clear_error(
        fake_engine: Callable[[dict[str, Route]], None]) -> None:
    fake_engine({"/v1/health": _health("0")})
    with pytest.raises(exception.VersionError, match="hutch engine stop"):
        transport.request_blocking("GET", "/v1/engine", autostart=False)


def test_no_engine_without_autostart_is_a_connection_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUTCH_RUNTIME_DIR", str(tmp_path))
    transport.forget_clients()
    with pytest.raises(exception.ConnectionError, match="no hutch engine answers"):
        transport.request_blocking("GET", "/v1/engine", autostart=False)
    assert issubclass(exception.ConnectionError, exception.EngineError)


def test_requests_reach_an_engine_of_our_version(
        fake_engine: Callable[[dict[str, Route]], None]) -> None:
    from hutch.api.models import API_VERSION

    fake_engine({"/v1/health": _health(API_VERSION),
                 "/v1/engine": lambda h: _json(h, {"pid": 42})})
    assert transport.request_blocking("GET", "/v1/engine", autostart=False) == {"pid": 42}


def test_an_error_event_inside_a_stream_raises_its_class(
        fake_engine: Callable[[dict[str, Route]], None]) -> None:
    from hutch.api.models import API_VERSION

    def stream(h: BaseHTTPRequestHandler) -> None:
        lines = [{"log": "step 1"}, {"error": {"type": "image_build", "message": "apt failed"}}]
        data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        h.send_response(200)
        h.send_header("Content-Type", "application/x-ndjson")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    fake_engine({"/v1/health": _health(API_VERSION), "/v1/stream": stream})
    seen: list[dict[str, Any]] = []
    with pytest.raises(exception.ImageBuildError, match="apt failed"):
        for event in transport.events_blocking("/v1/stream"):
            seen.append(event)
    assert seen == [{"log": "step 1"}]
