"""``sb.create_connect_token()``: HTTP and WebSocket requests reach a sandbox port only with
a token its owner made, and the server there learns the token's metadata from
``X-Verified-User-Data``, as with Modal's connect tokens.
"""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

import hutch
from hutch.exception import ConflictError, InvalidError
from tests.helpers import kill_daemon

#: An HTTP/1.1 server (keep-alive capable) that answers each request with what it got, and
#: appends each request line to /tmp/requests; a request for /upgrade switches protocols
#: and echoes what follows.
ECHO_SERVER = r'''
import json, http.server
class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args): pass
    def answer(self):
        with open("/tmp/requests", "a") as log:
            log.write(self.requestline + "\n")
        if self.path == "/upgrade":
            self.send_response(101)
            self.send_header("Upgrade", "echo")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            while data := self.connection.recv(65536):
                self.connection.sendall(data)
            self.close_connection = True
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = json.dumps({"path": self.path, "headers": dict(self.headers),
                           "body": self.rfile.read(length).decode()}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = answer
http.server.ThreadingHTTPServer(("127.0.0.1", 8080), Echo).serve_forever()
'''


@pytest.fixture
def server(engine: dict[str, Any]) -> Iterator[hutch.Sandbox]:
    sb = hutch.Sandbox.create("python3", "-c", ECHO_SERVER,
                              readiness_probe=hutch.Probe.with_tcp(8080), timeout=180)
    sb.wait_until_ready()
    yield sb
    sb.terminate()


def _get(url: str, token: str | None = None, **headers: str) -> tuple[int, dict[str, Any]]:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {"text": exc.read().decode()}


def _raw(url: str, data: bytes) -> bytes:
    """Send ``data`` over one TLS connection to ``url``; everything the proxy answers."""
    parts = urlsplit(url)
    context = ssl.create_default_context()  # (the SDK made this process trust the CA)
    with socket.create_connection((parts.hostname, parts.port), 20) as raw, \
            context.wrap_socket(raw, server_hostname=parts.hostname) as tls:
        tls.sendall(data)
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
        return answer


def test_a_token_lets_requests_through_with_its_metadata(server: hutch.Sandbox) -> None:
    creds = server.create_connect_token(user_metadata={"user_id": "foo"})
    assert creds.url.startswith("https://127.0.0.1:") and len(creds.token) >= 32
    status, seen = _get(creds.url + "/a/b?x=1", creds.token,
                        **{"X-Verified-User-Data": "forged"})
    assert status == 200 and seen["path"] == "/a/b?x=1"
    assert seen["headers"]["X-Verified-User-Data"] == '{"user_id": "foo"}'
    assert "Authorization" not in seen["headers"]
    # the query-parameter form, and its parameter taken out of what the server sees
    status, seen = _get(f"{creds.url}/p?a=1&_modal_connect_token={creds.token}&b=2")
    assert (status, seen["path"]) == (200, "/p?a=1&b=2")
    # another token, its own metadata; a string is passed as it is; none: no header
    other = server.create_connect_token(user_metadata="team-b")
    assert other.url == creds.url
    assert _get(other.url, other.token)[1]["headers"]["X-Verified-User-Data"] == "team-b"
    bare = server.create_connect_token()
    assert "X-Verified-User-Data" not in _get(bare.url, bare.token)[1]["headers"]
    # no token, a wrong one: 401, and nothing reaches the server
    before = server.filesystem.read_text("/tmp/requests").count("\n")
    assert _get(creds.url)[0] == 401
    assert _get(creds.url, creds.token[:-2] + "xx")[0] == 401
    assert server.filesystem.read_text("/tmp/requests").count("\n") == before


def test_bodies_and_their_framing(server: hutch.Sandbox) -> None:
    creds = server.create_connect_token(user_metadata="m")
    request = urllib.request.Request(creds.url + "/post", data=b"payload", method="POST",
                                     headers={"Authorization": f"Bearer {creds.token}"})
    with urllib.request.urlopen(request, timeout=20) as answer:
        assert json.loads(answer.read())["body"] == "payload"
    chunked = (f"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {creds.token}\r\n"
               "Transfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n").encode()
    assert _raw(creds.url, chunked).startswith(b"HTTP/1.1 411 ")


def test_a_websocket_style_upgrade_becomes_a_relay(server: hutch.Sandbox) -> None:
    creds = server.create_connect_token()
    parts = urlsplit(creds.url)
    with socket.create_connection((parts.hostname, parts.port), 20) as raw, \
            ssl.create_default_context().wrap_socket(raw, server_hostname=parts.hostname) as tls:
        tls.sendall(f"GET /upgrade?_modal_connect_token={creds.token} HTTP/1.1\r\nHost: x\r\n"
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += tls.recv(4096)
        assert head.startswith(b"HTTP/1.1 101 ")
        for message in (b"ping", b"GET / HTTP/1.1\r\n\r\n"):  # any bytes now, both ways
            tls.sendall(message)
            echoed = b""
            while len(echoed) < len(message):
                echoed += tls.recv(4096)
            assert echoed == message


def test_tokens_survive_a_daemon_restart_and_end_with_the_sandbox(
        server: hutch.Sandbox) -> None:
    creds = server.create_connect_token(user_metadata="kept")
    kill_daemon()
    hutch.Sandbox.from_id(server.object_id)  # (a client call starts a new daemon)
    status, seen = _get(creds.url, creds.token)
    assert (status, seen["headers"]["X-Verified-User-Data"]) == (200, "kept")
    server.terminate()
    with pytest.raises(ConflictError):
        server.create_connect_token()


def test_bad_arguments(server: hutch.Sandbox) -> None:
    with pytest.raises(InvalidError, match="port"):
        server.create_connect_token(port=0)
    with pytest.raises(InvalidError, match="serialize"):
        server.create_connect_token(user_metadata={"x": object()})
    with pytest.raises(InvalidError, match="control"):
        server.create_connect_token(user_metadata="a\r\nX-Other: forged")
