"""A streamed answer is written to its end before its app hears the exchange is over.

The chaos test once saw a file read (``sb.open(...).read()``) wait past its deadline, and
took it for an effect of the pause process it had killed.  It was not: a loop of plain
file reads hangs the same way now and then, with nothing killed.  The engine's HTTP server
answered ``receive()`` with ``http.disconnect`` as soon as the app *began* its last
``send``; Starlette's ``StreamingResponse`` (as the engine's own NDJSON streams) watches
``receive()`` in a second task and cancels the writing task when the disconnect comes.  If
the last write had to wait for the client to read (a full socket buffer: a few MiB of a
file), it was cancelled half-way, yet the server counted the answer complete and waited for
the next request on the connection, while the client waited for the rest of the body: for
ever (a file read has no read timeout).

Here the app streams like Starlette does, and its last message carries more than a socket
buffer holds, so that its write must wait for the client every time.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from hutch.engine.httpd.server import HTTPServer

#: More than a Unix socket buffers: the last write waits for the client to read.
LAST_PART = 4 << 20
#: Seconds the client gives the whole answer (it takes milliseconds).
DEADLINE = 10.0

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def streaming_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Streams as Starlette's ``StreamingResponse`` does under ASGI < 2.4: the answer is
    written in one task while another waits for ``http.disconnect`` and then cancels it."""
    while (await receive()).get("more_body"):
        pass  # the request's body (a GET has none)
    async with trio.open_nursery() as nursery:
        async def stream() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            await send({"type": "http.response.body", "body": b"x" * LAST_PART,
                        "more_body": False})
            nursery.cancel_scope.cancel()

        nursery.start_soon(stream)
        while (await receive())["type"] != "http.disconnect":
            pass
        nursery.cancel_scope.cancel()


async def _read_chunked_answer(stream: trio.SocketStream, buffer: bytearray) -> bytes:
    """One chunked answer's body, read to its last chunk."""
    async def more() -> None:
        data = await stream.receive_some(1 << 20)
        assert data, f"the server closed the connection ({len(buffer)} bytes unread)"
        buffer.extend(data)

    while b"\r\n\r\n" not in buffer:
        await more()
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head, head
    buffer[:] = rest
    body = bytearray()
    while True:
        while b"\r\n" not in buffer:
            await more()
        line, _, rest = bytes(buffer).partition(b"\r\n")
        size = int(line, 16)
        while len(rest) < size + 2:
            await more()
            line, _, rest = bytes(buffer).partition(b"\r\n")
        body += rest[:size]
        buffer[:] = rest[size + 2:]
        if size == 0:
            return bytes(body)


def test_the_last_part_of_a_stream_reaches_the_client(tmp_path: Path) -> None:
    async def main() -> None:
        path = str(tmp_path / "engine.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(4)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(HTTPServer(streaming_app).serve,
                                trio.socket.from_stdlib_socket(listener), stop.wait)
            stream = await trio.open_unix_socket(path)
            buffer = bytearray()
            try:
                for n in range(2):  # the connection carries the next request too
                    await stream.send_all(b"GET /file HTTP/1.1\r\nhost: engine\r\n\r\n")
                    with trio.move_on_after(DEADLINE) as waited:
                        body = await _read_chunked_answer(stream, buffer)
                    assert not waited.cancelled_caught, \
                        f"answer {n}: the client still waits for the end of the body " \
                        f"after {DEADLINE} s ({len(buffer)} bytes unparsed)"
                    assert body == b"first" + b"x" * LAST_PART
            finally:
                await stream.aclose()
                stop.set()

    trio.run(main)
