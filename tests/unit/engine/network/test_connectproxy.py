"""hutch.engine.network.connectproxy: where the token is found, what the sandbox's server
gets instead, and where a refused upgrade's answer ends."""

from __future__ import annotations

import trio

from hutch.engine.httpd import parse
from hutch.engine.network import connectproxy


def _request(head: bytes) -> parse.Request:
    return parse.parse_head(head)


def test_the_token_from_the_header_or_the_query() -> None:
    header = _request(b"GET /x?a=1 HTTP/1.1\r\nAuthorization: Bearer  tok \r\nHost: h")
    assert connectproxy._token(header) == ("tok", b"/x?a=1", True)
    query = _request(b"GET /x?a=1&_modal_connect_token=t2&b=2 HTTP/1.1\r\nHost: h")
    assert connectproxy._token(query) == ("t2", b"/x?a=1&b=2", False)
    only = _request(b"GET /?_modal_connect_token=t3 HTTP/1.1\r\nHost: h")
    assert connectproxy._token(only) == ("t3", b"/", False)
    basic = _request(b"GET / HTTP/1.1\r\nAuthorization: Basic abc\r\nHost: h")
    assert connectproxy._token(basic)[0] is None


def test_the_rewritten_head() -> None:
    request = _request(b"GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer t\r\n"
                       b"X-Verified-User-Data: forged\r\nX_Verified_User_Data: forged\r\n"
                       b"Connection: keep-alive, X-Verified-User-Data")
    head = connectproxy.rewrite(request, b"/", True, '{"u": 1}', upgrade=False)
    assert head == (b"GET / HTTP/1.1\r\nhost: h\r\nX-Verified-User-Data: {\"u\": 1}\r\n"
                    b"Connection: close\r\n\r\n")
    # the body's length as the engine counted it, whatever the client wrote
    body = _request(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n"
                    b"Content-Length: 5\r\nTransfer-Encoding: ,")
    assert connectproxy.rewrite(body, b"/", False, None, upgrade=False).count(
        b"ontent-") == 1
    upgrade = _request(b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
                       b"Connection: keep-alive, Upgrade")
    assert connectproxy._is_upgrade(upgrade)
    kept = connectproxy.rewrite(upgrade, b"/", False, None, upgrade=True)
    assert kept.endswith(b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    assert b"keep-alive" not in kept and b"close" not in kept
    for other in (b"Upgrade: h2c\r\nHTTP2-Settings: AAA\r\nConnection: Upgrade",
                  b"Upgrade: websocket\r\nConnection: not-an-upgrade"):
        refused = _request(b"GET / HTTP/1.1\r\nHost: h\r\n" + other)
        assert not connectproxy._is_upgrade(refused)
        plain = connectproxy.rewrite(refused, b"/", False, None, upgrade=False)
        assert plain.endswith(b"host: h\r\nConnection: close\r\n\r\n"), plain


class _Source(trio.abc.ReceiveStream):
    def __init__(self, *pieces: bytes) -> None:
        self.pieces = list(pieces)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""

    async def aclose(self) -> None:
        pass


class _Sink(trio.abc.SendStream):
    def __init__(self) -> None:
        self.data = b""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.data += bytes(data)

    async def wait_send_all_might_not_block(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def _body(head: bytes, *pieces: bytes) -> bytes:
    sink = _Sink()

    async def main() -> None:
        reader = connectproxy._Reader(_Source(*pieces))  # type: ignore[arg-type]
        await connectproxy._response_body(reader, sink, head)  # type: ignore[arg-type]

    trio.run(main)
    return sink.data


def test_a_refused_upgrades_answer_ends_with_its_body() -> None:
    chunked = b"HTTP/1.1 400 No\r\nTransfer-Encoding: chunked\r\n\r\n"
    big = b"x" * 300_000  # relayed in pieces, never held whole
    assert _body(chunked, b"%x\r\n" % len(big), big[:100_000], big[100_000:],
                 b"\r\n0\r\n\r\n") == b"%x\r\n" % len(big) + big + b"\r\n0\r\n\r\n"
    assert _body(chunked, b"3\r\nabc\r", b"\n0\r\n\r\nNEXT") == b"3\r\nabc\r\n0\r\n\r\n"
    assert _body(chunked, b"0\r\nX-T: 1\r\n\r\nNEXT") == b"0\r\nX-T: 1\r\n\r\n"
    sized = b"HTTP/1.1 400 No\r\nContent-Length: 4\r\n\r\n"
    assert _body(sized, b"ab", b"cdNEXT") == b"abcd"
    assert _body(b"HTTP/1.0 400 No\r\n\r\n", b"all", b" of it") == b"all of it"
