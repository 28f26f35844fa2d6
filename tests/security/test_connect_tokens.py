"""Connect tokens against a client that wants past them: the sandbox's server must see
``X-Verified-User-Data`` only as the engine set it, and no request without a valid token.

The attacks: a second request pipelined behind an admitted one (with a forged header, or
hidden in the first one's body), the classic smuggling pair Content-Length +
Transfer-Encoding, a second request after an upgrade the server refused, and another
sandbox's token.
"""

from __future__ import annotations

import json
import socket
import ssl
from urllib.parse import urlsplit

import hutch
from tests.integration.test_connect_tokens import ECHO_SERVER, _raw
from tests.integration.test_connect_tokens import server as server  # (the fixture)


def _requests_seen(sb: hutch.Sandbox) -> list[str]:
    try:
        return sb.filesystem.read_text("/tmp/requests").splitlines()
    except hutch.exception.SandboxFilesystemNotFoundError:
        return []


def test_a_pipelined_request_is_never_forwarded(server: hutch.Sandbox) -> None:
    creds = server.create_connect_token(user_metadata="alice")
    first = f"GET /one HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {creds.token}\r\n\r\n"
    forged = "GET /two HTTP/1.1\r\nHost: x\r\nX-Verified-User-Data: mallory\r\n\r\n"
    answer = _raw(creds.url, (first + forged).encode())
    assert answer.count(b"HTTP/1.1 200") == 1 and b"mallory" not in answer
    # hidden in the body of an admitted request: the body is Content-Length bytes only
    body = forged
    smuggled = (f"POST /three HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {creds.token}\r\n"
                f"Content-Length: 4\r\n\r\n{body}")
    _raw(creds.url, smuggled.encode())
    assert _requests_seen(server) == ["GET /one HTTP/1.1", "POST /three HTTP/1.1"]


def test_the_smuggling_pair_is_refused(server: hutch.Sandbox) -> None:
    creds = server.create_connect_token()
    both = (f"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {creds.token}\r\n"
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert _raw(creds.url, both.encode()).startswith(b"HTTP/1.1 400 ")
    assert _requests_seen(server) == []


def test_after_a_refused_upgrade_nothing_more_goes_through(server: hutch.Sandbox) -> None:
    creds = server.create_connect_token(user_metadata="alice")
    parts = urlsplit(creds.url)
    with socket.create_connection((parts.hostname, parts.port), 20) as raw, \
            ssl.create_default_context().wrap_socket(raw, server_hostname=parts.hostname) as tls:
        tls.sendall(f"GET /no-upgrade HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                    f"{creds.token}\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n".encode())
        tls.sendall(b"GET /forged HTTP/1.1\r\nHost: x\r\nX-Verified-User-Data: mallory\r\n\r\n")
        answer = b""
        while chunk := tls.recv(65536):  # the proxy ends the connection after the answer
            answer += chunk
    assert answer.count(b"HTTP/1.1 200") == 1
    assert _requests_seen(server) == ["GET /no-upgrade HTTP/1.1"]


def test_a_token_opens_only_its_own_sandbox(server: hutch.Sandbox) -> None:
    other = hutch.Sandbox.create("python3", "-c", ECHO_SERVER,
                                 readiness_probe=hutch.Probe.with_tcp(8080), timeout=120)
    try:
        other.wait_until_ready()
        mine = server.create_connect_token()
        theirs = other.create_connect_token()
        request = f"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {mine.token}\r\n\r\n"
        assert _raw(theirs.url, request.encode()).startswith(b"HTTP/1.1 401 ")
        assert _requests_seen(other) == []
    finally:
        other.terminate()


def test_other_spellings_and_other_upgrades_carry_no_header_of_the_clients(
        server: hutch.Sandbox) -> None:
    """A CGI-style server reads ``X_Verified_User_Data`` as the verified header; an ``h2c``
    upgrade would turn the connection into HTTP/2 requests the engine does not read."""
    creds = server.create_connect_token(user_metadata="alice")
    forged = (f"GET /spelled HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {creds.token}\r\n"
              "X_Verified_User_Data: mallory\r\nx-verified-user-data: mallory\r\n\r\n")
    answer = _raw(creds.url, forged.encode())
    seen = json.loads(answer.partition(b"\r\n\r\n")[2])["headers"]
    assert [v for k, v in seen.items()
            if k.lower().replace("_", "-") == "x-verified-user-data"] == ["alice"]
    h2c = (f"GET /h2c HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {creds.token}\r\n"
           "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
           "Connection: Upgrade, HTTP2-Settings\r\n\r\n")
    answer = _raw(creds.url, h2c.encode() + b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    seen = json.loads(answer.partition(b"\r\n\r\n")[2])["headers"]
    assert "Upgrade" not in seen and "HTTP2-Settings" not in seen
    assert seen["Connection"] == "close"
    assert _requests_seen(server) == ["GET /spelled HTTP/1.1", "GET /h2c HTTP/1.1"]
