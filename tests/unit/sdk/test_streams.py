"""hutch.sdk.streams.StreamReader without an engine: what ``close()`` leaves."""

from __future__ import annotations

import anyio

from hutch.sdk.streams import StreamReader


def test_a_closed_reader_gives_nothing_and_asks_nothing() -> None:
    """No engine runs here: a read that asked for anything would fail to connect."""
    reader: StreamReader[str] = StreamReader("/v1/execs/ex-x/output", 1, text=True)
    reader.close()
    assert reader.read() == "" and list(reader) == []

    async def main() -> list[str]:
        binary: StreamReader[bytes] = StreamReader("/v1/execs/ex-y/output", 2, text=False)
        await binary.aclose()
        return [item async for item in binary]

    assert anyio.run(main) == []
