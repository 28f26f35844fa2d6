"""Request heads as the engine's HTTP server reads them: strict, and refusals carry a status."""

from __future__ import annotations

import pytest

from hutch.engine.httpd.parse import (
    MAX_HEAD,
    BadRequest,
    chunk_size,
    parse_head,
    take_head,
)


def test_a_plain_request() -> None:
    req = parse_head(b"POST /v1/x?a=1 HTTP/1.1\r\nHost: e\r\nContent-Length: 5\r\n"
                     b"X-Thing:  spaced value \t")
    assert (req.method, req.target, req.version) == ("POST", b"/v1/x?a=1", "1.1")
    assert req.headers == [(b"host", b"e"), (b"content-length", b"5"),
                           (b"x-thing", b"spaced value")]
    assert (req.content_length, req.chunked, req.keep_alive) == (5, False, True)


@pytest.mark.parametrize(("head", "keep"), [
    (b"GET / HTTP/1.1", True),
    (b"GET / HTTP/1.1\r\nConnection: close", False),
    (b"GET / HTTP/1.1\r\nConnection: Keep-Alive, Close", False),
    (b"GET / HTTP/1.0", False),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive", True),
])
def test_keep_alive_follows_the_version_and_connection_header(head: bytes, keep: bool) -> None:
    assert parse_head(head).keep_alive is keep


def test_chunked_and_expect() -> None:
    req = parse_head(b"PUT /f HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue")
    assert req.chunked and req.expect_continue and req.content_length == 0


@pytest.mark.parametrize(("head", "status"), [
    (b"GET /", 400),  # no version
    (b"GET  / HTTP/1.1", 400),  # two spaces
    (b"G(T / HTTP/1.1", 400),
    (b"GET /a\x01b HTTP/1.1", 400),
    (b"GET /\xc3\xa9 HTTP/1.1", 400),  # 8-bit in the target
    (b"GET / HTTP/2.0", 505),
    (b"GET / FTP/1.1", 400),
    (b"GET / HTTP/1.1\r\nno colon", 400),
    (b"GET / HTTP/1.1\r\nbad name: x", 400),
    (b"GET / HTTP/1.1\r\nA: 1\r\n folded", 400),
    (b"GET / HTTP/1.1\r\nA: x\x00y", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: -1", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 0x10", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked", 501),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked", 400),
    (b"POST / HTTP/1.1\r\nExpect: something-else", 417),
])
def test_malformed_heads_are_refused_with_a_status(head: bytes, status: int) -> None:
    with pytest.raises(BadRequest) as info:
        parse_head(head)
    assert info.value.status == status


def test_repeated_equal_content_lengths_are_one() -> None:
    req = parse_head(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3")
    assert req.content_length == 3


def test_take_head_waits_for_the_blank_line_and_skips_leading_ones() -> None:
    buf = bytearray(b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n")
    assert take_head(buf) is None
    buf += b"\r\nbody"
    assert take_head(buf) == b"GET / HTTP/1.1\r\nHost: x"
    assert buf == b"body"


def test_a_head_too_large_is_431() -> None:
    buf = bytearray(b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD)
    with pytest.raises(BadRequest) as info:
        take_head(buf)
    assert info.value.status == 431


@pytest.mark.parametrize(("line", "size"), [(b"0", 0), (b"1a", 26), (b"FF;ext=1", 255),
                                            (b"10 ", 16)])
def test_chunk_sizes(line: bytes, size: int) -> None:
    assert chunk_size(line) == size


@pytest.mark.parametrize("line", [b"", b"x", b"-1", b"1" * 17, b"0x10"])
def test_bad_chunk_sizes(line: bytes) -> None:
    with pytest.raises(BadRequest):
        chunk_size(line)
