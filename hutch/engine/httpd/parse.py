"""Parsing HTTP/1.1 requests for the engine's server (RFC 9112), strictly.

Separate from the server so the rules can be read (and tested) on their own.  Anything
ambiguous is refused rather than guessed: folded header lines, a ``Content-Length`` that
is not one decimal number, both ``Content-Length`` and ``Transfer-Encoding`` (the classic
request-smuggling pair), transfer codings other than ``chunked``.  A refusal is a
:class:`BadRequest` carrying the status to answer with; the server then closes the
connection, since it can no longer tell where the next request starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Largest request head (request line and headers) accepted: 431 past it.
MAX_HEAD = 64 * 1024
#: Longest chunk-size line (with extensions) accepted in a chunked body.
MAX_LINE = 4096
#: Largest single chunk a client may announce (bytes); the size line is hex.
MAX_CHUNK = 1 << 40

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_TARGET = re.compile(rb"[\x21-\x7e]+\Z")  # visible ASCII: no spaces, controls or 8-bit
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*\Z")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}\Z")


class BadRequest(Exception):
    """A request this server will not take: ``status`` is the answer (4xx or 5xx)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(slots=True)
class Request:
    method: str
    target: bytes
    version: str  # "1.1" or "1.0"
    headers: list[tuple[bytes, bytes]]  # names lower-cased, values stripped
    content_length: int
    chunked: bool
    keep_alive: bool
    expect_continue: bool


def is_token(value: bytes) -> bool:
    return _TOKEN.match(value) is not None


def take_head(buffer: bytearray) -> bytes | None:
    """Remove and return the next request head from ``buffer`` (without its blank line), or
    None if it is not all there yet.  Empty lines before a request are skipped, as RFC 9112
    asks of a server."""
    while buffer.startswith(b"\r\n"):
        del buffer[:2]
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > MAX_HEAD:
            raise BadRequest(431, "request head too large")
        return None
    if end > MAX_HEAD:
        raise BadRequest(431, "request head too large")
    head = bytes(buffer[:end])
    del buffer[:end + 4]
    return head


def parse_head(head: bytes) -> Request:
    """The request line and header fields of one request."""
    line, *fields = head.split(b"\r\n")
    parts = line.split(b" ")
    if len(parts) != 3:
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if not is_token(method):
        raise BadRequest(400, "malformed method")
    if not _TARGET.match(target):
        raise BadRequest(400, "malformed request target")
    if version == b"HTTP/1.1":
        ver = "1.1"
    elif version == b"HTTP/1.0":
        ver = "1.0"
    elif version.startswith(b"HTTP/"):
        raise BadRequest(505, "only HTTP/1.1 and HTTP/1.0 are served")
    else:
        raise BadRequest(400, "malformed request line")

    headers: list[tuple[bytes, bytes]] = []
    lengths: set[bytes] = set()
    codings: list[bytes] = []
    connection: list[bytes] = []
    expect = False
    for field in fields:
        name, sep, value = field.partition(b":")
        if not sep or not is_token(name):
            raise BadRequest(400, "malformed header field")
        value = value.strip(b" \t")
        if not _FIELD_VALUE.match(value):
            raise BadRequest(400, "malformed header value")
        name = name.lower()
        headers.append((name, value))
        if name == b"content-length":
            lengths.update(v.strip(b" \t") for v in value.split(b","))
        elif name == b"transfer-encoding":
            codings += [c.strip(b" \t").lower() for c in value.split(b",") if c.strip()]
        elif name == b"connection":
            connection += [c.strip(b" \t").lower() for c in value.split(b",")]
        elif name == b"expect":
            if value.lower() != b"100-continue":
                raise BadRequest(417, "only Expect: 100-continue is understood")
            expect = True

    chunked = False
    length = 0
    if codings:
        if lengths:
            raise BadRequest(400, "both Content-Length and Transfer-Encoding")
        if codings != [b"chunked"]:
            raise BadRequest(501, "only the chunked transfer coding is understood")
        if ver == "1.0":
            raise BadRequest(400, "chunked transfer coding in an HTTP/1.0 request")
        chunked = True
    elif lengths:
        if len(lengths) != 1:
            raise BadRequest(400, "conflicting Content-Length values")
        (text,) = lengths
        if not text.isdigit() or len(text) > 18:
            raise BadRequest(400, "malformed Content-Length")
        length = int(text)
    if ver == "1.1":
        keep = b"close" not in connection
    else:
        keep = b"keep-alive" in connection and b"close" not in connection
    return Request(method=method.decode("ascii"), target=target, version=ver,
                   headers=headers, content_length=length, chunked=chunked,
                   keep_alive=keep, expect_continue=expect and ver == "1.1")


def chunk_size(line: bytes) -> int:
    """The size announced by a chunk-size line (chunk extensions are ignored)."""
    size = line.split(b";", 1)[0].strip(b" \t")
    if not _HEX.match(size):
        raise BadRequest(400, "malformed chunk size")
    value = int(size, 16)
    if value > MAX_CHUNK:
        raise BadRequest(413, "chunk too large")
    return value
