"""hutch.engine.network.tlsproxy.answer_unavailable: what a client of a tunnel whose
sandbox port does not listen gets (an HTTP 502 for HTTP, a close for anything else)."""

from __future__ import annotations

import trio
import trio.testing

from hutch.engine.network import tlsproxy


async def _exchange(sent: bytes, close_after: bool = False) -> bytes:
    client, server = trio.testing.memory_stream_pair()
    answer = b""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tlsproxy.answer_unavailable, server)
        if sent:
            await client.send_all(sent)
        if close_after:
            await client.send_eof()
        while data := await client.receive_some(65536):
            answer += data
    return answer


def test_an_http_client_is_told_502() -> None:
    answer = trio.run(_exchange, b"GET /hostname HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert b"Content-Length: %d" % len(body) in head and b"not accepting" in body


def test_another_protocol_is_closed_without_an_answer() -> None:
    assert trio.run(_exchange, b"\x16\x03\x01binary hello\n") == b""
    assert trio.run(_exchange, b"", True) == b""


def test_a_silent_client_is_closed_after_the_wait() -> None:
    async def main() -> float:
        start = trio.current_time()
        await _exchange(b"")
        return trio.current_time() - start

    waited = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert tlsproxy.REQUEST_LINE_WAIT <= waited < tlsproxy.REQUEST_LINE_WAIT + 1
