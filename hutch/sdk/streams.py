"""Output readers and the stdin writer of sandboxes and execs, with Modal's semantics.

A :class:`StreamReader` is one stream (stdout or stderr) of an exec or of a sandbox's
entrypoint.  ``read()`` returns everything until the stream ends and a second ``read()``
returns empty; iterating yields output as it arrives, chunk by chunk, or line by line with
``bufsize=1``; ``text=False`` gives bytes.  Each call opens a request from where the last
one stopped (exec output is consumed in the engine, entrypoint logs are read from an
offset), so one reader works from any thread or event loop.

A :class:`StreamWriter` buffers ``write()`` locally (up to :data:`MAX_BUFFER_SIZE`) and
sends it with ``drain()``, which also delivers a pending ``write_eof()``.
"""

from __future__ import annotations

import codecs
import enum
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any, Generic, TypeVar

from hutch.exception import InvalidError
from hutch.sdk.syncbridge import iterate_sync, synchronize_direct
from hutch.sdk.termsafe import TerminalFilter
from hutch.sdk.transport import client

#: Bytes a sandbox's ``stdin.write`` may hold before a ``drain()`` (Modal's limits).
MAX_BUFFER_SIZE = 2 * 1024 * 1024
#: The same for an exec's stdin.
EXEC_MAX_BUFFER_SIZE = 16 * 1024 * 1024

T = TypeVar("T", str, bytes)


class StreamType(enum.Enum):
    """Where an exec's output goes: kept for reading (PIPE), discarded in the engine
    (DEVNULL), or printed to this process's stdout as it arrives (STDOUT)."""

    DEVNULL = subprocess.DEVNULL
    PIPE = subprocess.PIPE
    STDOUT = subprocess.STDOUT

    def __repr__(self) -> str:
        return f"hutch.stream_type.{self.__class__.__name__}.{self.name}"


def check_stream_type(value: object, name: str) -> StreamType:
    if not isinstance(value, StreamType):
        raise InvalidError(f"Unsupported StreamType for {name}: {value!r}")
    return value


class _Source:
    """Where a reader's chunks come from: an exec's output or a sandbox's log file."""

    def __init__(self, path: str, fd: int, resumable: bool) -> None:
        self.path = path
        self.fd = fd
        self.resumable = resumable  # logs: ask from an offset; exec output: engine-consumed
        self.offset = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        params: dict[str, Any] = {"fd": self.fd}
        if self.resumable and self.offset:
            params["offset"] = self.offset
        async for event in client().stream_events(self.path, params):
            data = event.get("data")
            if data is not None:
                self.offset += len(data)
                yield data


class StreamReader(Generic[T]):
    """One output stream; ``read()``, ``for``/``async for`` over it."""

    def __init__(self, path: str, fd: int, *, text: bool, by_line: bool = False,
                 resumable: bool = False, stream_type: StreamType = StreamType.PIPE) -> None:
        self._source = _Source(path, fd, resumable)
        self._text = text
        self._by_line = by_line
        self._stream_type = stream_type
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending: Any = "" if text else b""
        self._eof = False

    @property
    def file_descriptor(self) -> int:
        return self._source.fd

    def _convert(self, data: bytes, final: bool = False) -> Any:
        return self._decoder.decode(data, final) if self._text else data

    async def _items(self) -> AsyncIterator[Any]:
        """Chunks (or lines) from where the last consumer stopped, until the stream ends."""
        if self._stream_type is StreamType.DEVNULL:
            raise ValueError("reading is not supported for a stream configured with "
                             "StreamType.DEVNULL")
        if self._stream_type is StreamType.STDOUT:
            raise InvalidError("Output can only be retrieved using the PIPE stream type.")
        newline: Any = "\n" if self._text else b"\n"
        if not self._eof:
            async for data in self._source.chunks():
                piece = self._convert(data)
                if not self._by_line:
                    if piece:
                        yield piece
                    continue
                self._pending += piece
                while (cut := self._pending.find(newline)) >= 0:
                    line, self._pending = self._pending[:cut + 1], self._pending[cut + 1:]
                    yield line
            self._eof = True
            tail = self._convert(b"", final=True)
            if tail:
                self._pending += tail
        if self._pending:
            rest, self._pending = self._pending, self._pending[:0]
            yield rest

    @synchronize_direct
    async def read(self) -> T:
        """Everything until the stream ends; a second call returns an empty value."""
        parts = [item async for item in self._items()]
        empty: Any = "" if self._text else b""
        joined: T = empty.join(parts)
        return joined

    def close(self) -> None:
        """Stop reading: later reads and iterations give nothing (what the process still
        writes stays unread, and once the engine holds enough of it the process waits, as
        on a full pipe)."""
        self._eof = True
        self._pending = self._pending[:0]

    async def aclose(self) -> None:
        """:meth:`close`, for async code."""
        self.close()

    def __aiter__(self) -> AsyncIterator[T]:
        return self._items()

    def __iter__(self) -> Iterator[T]:
        return iterate_sync(self._items, direct=True)

    async def _print_to_stdout(self) -> None:
        """Copy the stream to this process's stdout as it arrives (``StreamType.STDOUT``).
        Where that is a terminal, the sandbox's control sequences are shown, not obeyed
        (colours pass; :mod:`hutch.sdk.termsafe`), as the CLI does: a sandbox's output
        must not write the user's clipboard or rewrite their screen."""
        if _is_terminal(sys.stdout):
            shield = TerminalFilter()
            async for data in self._source.chunks():
                sys.stdout.buffer.write(shield.feed(data))
                sys.stdout.flush()
            sys.stdout.buffer.write(shield.flush())
            sys.stdout.flush()
            return
        async for data in self._source.chunks():
            if self._text:
                sys.stdout.write(self._convert(data))
            else:
                sys.stdout.buffer.write(data)
            sys.stdout.flush()
        if self._text:
            sys.stdout.write(self._convert(b"", final=True))
            sys.stdout.flush()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty()) and hasattr(stream, "buffer")
    except (AttributeError, ValueError):
        return False


class StreamWriter:
    """The stdin of an exec or of a sandbox's entrypoint."""

    def __init__(self, path: str, limit: int = MAX_BUFFER_SIZE) -> None:
        self._path = path
        self._limit = limit
        self._buffer = bytearray()
        self._eof = False
        self._eof_sent = False

    def write(self, data: bytes | bytearray | memoryview | str) -> None:
        """Queue ``data`` for the next :meth:`drain` (``str`` is UTF-8 encoded)."""
        if self._eof:
            raise ValueError("Stdin is closed. Cannot write to it.")
        if isinstance(data, str):
            data = data.encode()
        elif not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(
                f"data argument must be a bytes-like object, not {type(data).__name__}"
            )
        if len(self._buffer) + len(data) > self._limit:
            raise BufferError("Buffer size exceed limit. Call drain to flush the buffer.")
        self._buffer += data

    def write_eof(self) -> None:
        """Close stdin after what is buffered; delivered by the next :meth:`drain`."""
        self._eof = True

    @synchronize_direct
    async def drain(self) -> None:
        """Send what is buffered (and the end of input, after ``write_eof``)."""
        if not self._buffer and (self._eof_sent or not self._eof):
            return
        data, eof = bytes(self._buffer), self._eof
        await client().request("POST", self._path, content=data,
                               params={"eof": "true" if eof else "false"})
        del self._buffer[:len(data)]
        self._eof_sent = eof


def reader_mode(text: object, bufsize: object) -> tuple[bool, bool]:
    """Validate exec's ``text`` and ``bufsize``; returns ``(text, by_line)``."""
    if not isinstance(text, bool):
        raise InvalidError("text must be True or False")
    if bufsize not in (-1, 1) or isinstance(bufsize, bool):
        raise InvalidError("bufsize must be -1 (chunks as they arrive) or 1 (lines)")
    if bufsize == 1 and not text:
        raise ValueError("line-buffering is only supported when text=True")
    return text, bufsize == 1

