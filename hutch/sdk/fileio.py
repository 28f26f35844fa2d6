"""``sb.open(path, mode)``: a file handle on a sandbox's file, as Modal's ``FileIO``.

The handle is a path, a mode and a position; the engine keeps no state for it.  Reads ask
for a byte range; writes are buffered here (up to ``WRITE_BUFFER``) and sent at ``flush``,
``seek``, ``close`` or when the buffer is full.  Modes are Python's: ``r w a x`` with ``b``
and ``+``.  Text handles encode and decode UTF-8.
"""

from __future__ import annotations

from typing import Any

from hutch.exception import InvalidError, SandboxFilesystemIsADirectoryError
from hutch.sdk.files import SandboxFilesystem
from hutch.sdk.syncbridge import synchronize

WRITE_BUFFER = 1 << 20
READLINE_CHUNK = 1 << 16
_MODES = {m + b + p for m in "rwax" for b in ("", "b") for p in ("", "+")}


class FileIO:
    """An open file in a sandbox; use as a context manager or ``close()`` it."""

    def __init__(self, fs: SandboxFilesystem, path: str, mode: str) -> None:
        self._fs = fs
        self._path = path
        self._mode = mode
        self._binary = "b" in mode
        self._readable = mode[0] == "r" or "+" in mode
        self._writable = mode[0] != "r" or "+" in mode
        self._append = mode[0] == "a"
        self._pos = 0
        self._buffer = bytearray()
        self._buffer_at = 0
        self.closed = False

    @staticmethod
    async def open(fs: SandboxFilesystem, path: str, mode: str) -> FileIO:
        normalized = "".join(sorted(mode, key="rwaxb+".index)) if isinstance(mode, str) else ""
        if normalized not in _MODES:
            raise InvalidError(f"invalid mode {mode!r}: use r, w, a or x, with b and/or +")
        handle = FileIO(fs, path, normalized)
        fs._log(f"open ({normalized})", path)
        kind = normalized[0]
        if kind == "r":
            entry = await fs.stat.aio(path)
            if entry.type.value == "directory":
                raise SandboxFilesystemIsADirectoryError(f"Is a directory: {path!r}")
        else:
            entry = await fs._put(path, b"", mode={"w": "w", "a": "a", "x": "x"}[kind])
        handle._pos = entry.size if kind == "a" else 0
        return handle

    # helpers ------------------------------------------------------------------------------
    def _check(self, readable: bool = False, writable: bool = False) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if readable and not self._readable:
            raise ValueError(f"file not open for reading (mode {self._mode!r})")
        if writable and not self._writable:
            raise ValueError(f"file not open for writing (mode {self._mode!r})")

    def _out(self, data: bytes) -> Any:
        return data if self._binary else data.decode()

    async def _read_range(self, length: int | None) -> bytes:
        await self._flush()
        chunks = [c async for c in self._fs._stream(self._path, self._pos, length)]
        data = b"".join(chunks)
        self._pos += len(data)
        return data

    async def _flush(self) -> None:
        if not self._buffer:
            return
        data, at = bytes(self._buffer), self._buffer_at
        mode = "a" if self._append else "r+"
        await self._fs._put(self._path, data, mode=mode, offset=at)
        self._buffer.clear()

    # reading ------------------------------------------------------------------------------
    @synchronize
    async def read(self, n: int | None = None) -> Any:
        """``n`` bytes (characters are decoded from them in text mode), or all the rest."""
        self._check(readable=True)
        if n is not None and (not isinstance(n, int) or isinstance(n, bool)):
            raise TypeError("read() takes an int")
        return self._out(await self._read_range(None if n is None or n < 0 else n))

    @synchronize
    async def readline(self) -> Any:
        self._check(readable=True)
        await self._flush()
        line = bytearray()
        while True:
            chunks = [c async for c in self._fs._stream(self._path, self._pos + len(line),
                                                         READLINE_CHUNK)]
            data = b"".join(chunks)
            if not data:
                break
            cut = data.find(b"\n")
            if cut >= 0:
                line += data[:cut + 1]
                break
            line += data
        self._pos += len(line)
        return self._out(bytes(line))

    @synchronize
    async def readlines(self) -> list[Any]:
        self._check(readable=True)
        data = await self._read_range(None)
        return [self._out(line) for line in data.splitlines(keepends=True)]

    # writing ------------------------------------------------------------------------------
    @synchronize
    async def write(self, data: bytes | str) -> int:
        self._check(writable=True)
        if self._binary and not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"a bytes-like object is required, not {type(data).__name__}")
        if not self._binary and not isinstance(data, str):
            raise TypeError(f"write() argument must be str, not {type(data).__name__}")
        raw = data.encode() if isinstance(data, str) else bytes(data)
        if not self._buffer:
            self._buffer_at = self._pos
        self._buffer += raw
        self._pos += len(raw)
        if len(self._buffer) >= WRITE_BUFFER:
            await self._flush()
        return len(data)

    @synchronize
    async def flush(self) -> None:
        self._check()
        await self._flush()

    @synchronize
    async def seek(self, offset: int, whence: int = 0) -> int:
        self._check()
        await self._flush()
        if whence == 0:
            self._pos = offset
        elif whence == 1:
            self._pos += offset
        elif whence == 2:
            self._pos = (await self._fs.stat.aio(self._path)).size + offset
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if self._pos < 0:
            raise ValueError(f"negative seek position {self._pos}")
        return self._pos

    def tell(self) -> int:
        self._check()
        return self._pos

    @synchronize
    async def close(self) -> None:
        if not self.closed:
            try:
                await self._flush()
            finally:
                self.closed = True

    def __enter__(self) -> FileIO:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> FileIO:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close.aio()

    def __repr__(self) -> str:
        return f"FileIO({self._path!r}, {self._mode!r})"

