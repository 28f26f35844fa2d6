"""The TLS gateway's admission, from the client's side with Python's own ``ssl``: plain
HTTP, no certificate, another CA's certificate, a missing, wrong or revoked token are
each refused before a byte reaches the socket behind it; a good client's bytes go
through unchanged, both ways.  (The gateway in front of a real engine, with the SDK, is
tests/integration/test_remote_engine.py.)"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from hutch.engine.remote import credentials, gateway
from tests.helpers import wait_for


@dataclass
class Served:
    port: int
    data: Path
    bundle: Path
    received: list[bytes]


def _behind(path: Path, received: list[bytes]) -> threading.Thread:
    """What stands for the engine here: answers each request (a head without a body) 200
    with the bytes it received, keeping the connection, and records them."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(8)

    def connection(conn: socket.socket) -> None:
        with conn:
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                request, _, data = data.partition(b"\r\n\r\n")
                received.append(request + b"\r\n\r\n")
                body = json.dumps({"seen": request.decode("latin-1")}).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))

    def serve() -> None:
        while True:
            conn, _ = listener.accept()
            peek = conn.recv(4, socket.MSG_PEEK)
            if peek == b"stop":
                conn.close()
                return
            threading.Thread(target=connection, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    data = tmp_path / "data"
    credentials.ensure_server(data, [])
    bundle = credentials.issue_client(data, "tester", tmp_path / "bundle")
    received: list[bytes] = []
    engine_socket = tmp_path / "engine.sock"
    _behind(engine_socket, received)
    server = gateway.Gateway(data, engine_socket)
    started = threading.Event()
    box: dict[str, object] = {}

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            box["cancel"] = nursery.cancel_scope
            box["token"] = trio.lowlevel.current_trio_token()
            addresses = await nursery.start(server.serve, "127.0.0.1", 0)
            box["port"] = addresses[0][1]
            started.set()

    thread = threading.Thread(target=trio.run, args=(run,), daemon=True)
    thread.start()
    assert started.wait(30)
    try:
        yield Served(int(box["port"]), data, bundle, received)  # type: ignore[call-overload]
    finally:
        trio.from_thread.run_sync(box["cancel"].cancel,  # type: ignore[attr-defined]
                                  trio_token=box["token"])
        thread.join(10)
        with socket.socket(socket.AF_UNIX) as stop:
            stop.connect(str(engine_socket))
            stop.sendall(b"stop")


def _context(bundle: Path | None, ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if bundle is not None:
        context.load_cert_chain(bundle / "client.crt", bundle / "client.key")
    return context


def _answer(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
        if b"\r\n\r\n" in answer and answer.count(b"}") >= 1:
            break
    return answer


def _exchange(port: int, context: ssl.SSLContext | None, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        sock = context.wrap_socket(raw, server_hostname="127.0.0.1") if context else raw
        sock.sendall(request)
        return _answer(sock)


def _request(token: str | None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
    return f"GET /v1/health HTTP/1.1\r\nHost: hutch\r\n{auth}\r\n".encode()


def _token(served: Served) -> str:
    return (served.bundle / "token").read_text().strip()


def test_a_client_with_its_bundle_goes_through(served: Served) -> None:
    ca = served.bundle / "ca.crt"
    answer = _exchange(served.port, _context(served.bundle, ca), _request(_token(served)))
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer
    assert served.received == [_request(_token(served))]  # unchanged


def test_plain_http_is_told_to_use_https(served: Served) -> None:
    answer = _exchange(served.port, None, _request(_token(served)))
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"HTTPS only" in answer
    assert served.received == []


@pytest.mark.parametrize("token", [None, "hutch_wrong", "Basic abc"])
def test_a_missing_or_wrong_token_is_401(served: Served, token: str | None) -> None:
    ca = served.bundle / "ca.crt"
    request = _request(token) if token != "Basic abc" else \
        b"GET / HTTP/1.1\r\nAuthorization: Basic abc\r\n\r\n"
    answer = _exchange(served.port, _context(served.bundle, ca), request)
    assert answer.startswith(b"HTTP/1.1 401 "), answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["type"] == "unauthorized"
    assert served.received == []


def test_a_revoked_token_is_refused_at_once(served: Served) -> None:
    ca = served.bundle / "ca.crt"
    assert credentials.revoke(served.data, "tester")
    answer = _exchange(served.port, _context(served.bundle, ca), _request(_token(served)))
    assert answer.startswith(b"HTTP/1.1 401 "), answer
    assert served.received == []


def test_no_client_certificate_ends_in_the_handshake(served: Served) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)):
        answer = _exchange(served.port, _context(None, served.bundle / "ca.crt"),
                           _request(_token(served)))
        assert answer == b""  # (TLS 1.3 may report the refusal as a closed stream)
        raise ConnectionError("closed without an answer")
    assert served.received == []


def test_a_certificate_of_another_ca_is_refused(served: Served, tmp_path: Path) -> None:
    other = tmp_path / "other"
    credentials.ensure_server(other, [])
    stranger = credentials.issue_client(other, "tester", tmp_path / "stranger")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        answer = _exchange(served.port, _context(stranger, served.bundle / "ca.crt"),
                           _request(_token(served)))
        assert answer == b""
        raise ConnectionError("closed without an answer")
    assert served.received == []


def test_the_server_is_verified_by_the_client(served: Served, tmp_path: Path) -> None:
    """A client that trusts another CA refuses this server (no man in the middle)."""
    other = tmp_path / "other"
    credentials.ensure_server(other, [])
    with pytest.raises(ssl.SSLCertVerificationError):
        _exchange(served.port, _context(served.bundle, credentials.remote_dir(other) / "ca.crt"),
                  _request(_token(served)))


@pytest.mark.parametrize(("listen", "expected"), [
    ("tcp://127.0.0.1:7443", ("127.0.0.1", 7443)), ("tcp://[::1]:80", ("::1", 80)),
    ("tcp://0.0.0.0:1", ("0.0.0.0", 1)),
])
def test_listen_addresses(listen: str, expected: tuple[str, int]) -> None:
    assert gateway.parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["127.0.0.1:80", "tcp://host", "tcp://h:0",
                                    "tcp://h:70000", "http://h:80", "unix:///x"])
def test_bad_listen_addresses(listen: str) -> None:
    with pytest.raises(ValueError, match="tcp://HOST:PORT"):
        gateway.parse_listen(listen)


def test_revoking_a_client_ends_its_open_connections(served: Served) -> None:
    ca = served.bundle / "ca.crt"
    with socket.create_connection(("127.0.0.1", served.port), timeout=20) as raw, \
            _context(served.bundle, ca).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(_request(_token(served)))
        assert _answer(tls).startswith(b"HTTP/1.1 200 OK")
        tls.sendall(_request(_token(served)))  # the same connection goes on serving
        assert _answer(tls).startswith(b"HTTP/1.1 200 OK")
        assert credentials.revoke(served.data, "tester")
        tls.settimeout(gateway.RECHECK_EVERY * 5)
        try:
            assert tls.recv(4096) == b""  # closed by the gateway within its recheck
        except (ssl.SSLError, ConnectionError):
            pass
    assert len(served.received) == 2


def test_a_certificate_with_another_clients_token_is_refused(served: Served,
                                                             tmp_path: Path) -> None:
    other = credentials.issue_client(served.data, "other", tmp_path / "other")
    ca = served.bundle / "ca.crt"
    mixed = _exchange(served.port, _context(other, ca), _request(_token(served)))
    assert mixed.startswith(b"HTTP/1.1 401 "), mixed
    own = _exchange(served.port, _context(other, ca),
                    _request((other / "token").read_text().strip()))
    assert own.startswith(b"HTTP/1.1 200 OK"), own


def test_a_head_too_large_is_431(served: Served) -> None:
    ca = served.bundle / "ca.crt"
    huge = b"GET / HTTP/1.1\r\nX-Filler: " + b"a" * (gateway.MAX_HEAD + 10) + b"\r\n\r\n"
    answer = _exchange(served.port, _context(served.bundle, ca), huge)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert served.received == []


def _closed_at_once(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as probe:
        probe.settimeout(1)
        try:
            return probe.recv(1) == b""
        except TimeoutError:
            return False
        except ConnectionError:
            return True


def test_idle_connections_of_one_peer_cannot_shut_out_the_rest(served: Served) -> None:
    """A peer that opens connections and sends nothing gets MAX_ADMITTING_PER_PEER of
    them waiting; the next are closed at once (not queued, each holding a descriptor);
    once they go, a client is admitted again."""
    idle = [socket.create_connection(("127.0.0.1", served.port), timeout=20)
            for _ in range(gateway.MAX_ADMITTING_PER_PEER)]
    try:
        wait_for(lambda: _closed_at_once(served.port), timeout=30,
                 what="a connection past the limit closed at once")
    finally:
        for sock in idle:
            sock.close()
    ca = served.bundle / "ca.crt"
    answer = wait_for(lambda: _exchange(served.port, _context(served.bundle, ca),
                                        _request(_token(served))) or None, timeout=30)
    assert answer.startswith(b"HTTP/1.1 200 OK")


def test_a_connection_that_sends_nothing_is_closed_quietly(
        served: Served, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Past the admission deadline it is closed, with no traceback in the log (a peer
    could otherwise fill the log by opening connections)."""
    monkeypatch.setattr(gateway, "ADMISSION_TIMEOUT", 0.3)
    with caplog.at_level("DEBUG", logger="hutch.remote"), \
            socket.create_connection(("127.0.0.1", served.port), timeout=20) as idle:
        assert idle.recv(1) == b""  # closed by the gateway, not by this test
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], \
        [r.getMessage() for r in caplog.records]
