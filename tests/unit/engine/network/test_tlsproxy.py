"""hutch.engine.network.tlsproxy: what a client of a tunnel whose sandbox port does not
listen gets (an HTTP 502 for HTTP, a close for anything else), and that a client leaving
early leaves nothing open."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

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


def test_the_ca_signs_for_localhost_only(tmp_path: Path) -> None:
    """Programs trust the engine's CA (hutch.sdk.catrust): a certificate it signed for
    another name must not verify, even if its key leaked."""
    import ssl
    import subprocess

    ca = tlsproxy.ensure_ca(tmp_path)
    text = subprocess.run(["openssl", "x509", "-in", str(ca / "ca.crt"), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    assert "Name Constraints: critical" in text and "DNS:localhost" in text
    forged = subprocess.run(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
        "-subj /CN=example.com -addext subjectAltName=DNS:example.com -keyout f.key "
        "-out f.csr && openssl x509 -req -in f.csr -CA ca.crt -CAkey ca.key "
        "-CAcreateserial -days 1 -copy_extensions copy -out forged.crt",
        shell=True, cwd=ca, capture_output=True, text=True)
    assert forged.returncode == 0, forged.stderr
    check = subprocess.run(["openssl", "verify", "-CAfile", "ca.crt", "forged.crt"],
                           cwd=ca, capture_output=True, text=True)
    assert check.returncode != 0 and "permitted subtree violation" in check.stderr
    served = subprocess.run(["openssl", "verify", "-CAfile", "ca.crt", "server.crt"],
                            cwd=ca, capture_output=True, text=True)
    assert served.returncode == 0, served.stderr
    assert ssl.create_default_context(cafile=str(ca / "ca.crt"))  # (a usable CA file)


def test_clients_that_leave_before_the_handshake_leave_nothing_open(tmp_path: Path) -> None:
    """An encrypted tunnel whose sandbox server speaks first: a client that connects and
    goes without a TLS handshake must not leave the connection's handler (and its two
    descriptors) behind.  (trio's handshake, begun by both relays at once, used to leave
    the second one waiting forever.)"""
    import socket

    context = tlsproxy.server_context(tlsproxy.ensure_ca(tmp_path))

    async def main() -> tuple[int, int, list[int]]:
        async with trio.open_nursery() as nursery:
            async def speak_first(stream: trio.abc.Stream) -> None:
                await stream.send_all(b"hello")
                await trio.sleep_forever()

            upstream = await trio.open_tcp_listeners(0, host="127.0.0.1")
            up_port = upstream[0].socket.getsockname()[1]
            nursery.start_soon(trio.serve_listeners, speak_first, upstream)
            done = trio.Event()
            endpoint = tlsproxy.TunnelEndpoint(
                context, lambda: trio.open_tcp_stream("127.0.0.1", up_port), done,
                lambda delta: None)
            port = await nursery.start(tlsproxy.serve_tunnel, endpoint)
            before = len(os.listdir("/proc/self/fd"))

            def leave_at_once() -> None:
                for _ in range(5):
                    with socket.create_connection(("127.0.0.1", port), 5) as s:
                        s.settimeout(0.2)
                        with contextlib.suppress(OSError):
                            s.recv(10)

            await trio.to_thread.run_sync(leave_at_once)
            with trio.move_on_after(10):
                while endpoint.open_now[0]:
                    await trio.sleep(0.01)
            after = len(os.listdir("/proc/self/fd"))
            done.set()
            nursery.cancel_scope.cancel()
        return before, after, endpoint.open_now

    before, after, open_now = trio.run(main)
    assert open_now == [0] and after <= before
