"""A sandbox's files: ``sb.filesystem`` (Modal's newer calls) and ``sb.open`` handles.

Paths resolve inside the sandbox (relative ones against its workdir) and can never leave
it: the engine resolves them with openat2 ``RESOLVE_IN_ROOT`` (:mod:`hutch.engine.files.sandboxfs`).
Contents stream in both directions, so copying a large file holds only a chunk of it.
Errors are :class:`~hutch.exception.SandboxFilesystemError` subclasses that are also the
builtin ``FileNotFoundError``, ``IsADirectoryError``, ... of the same meaning.
"""

from __future__ import annotations

import enum
import errno
import os
import posixpath
import secrets
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from hutch.api import urls
from hutch.exception import InvalidError
from hutch.sdk import output
from hutch.sdk.syncbridge import synchronize, synchronize_generator
from hutch.sdk.transport import client, error_for

CHUNK = 1 << 20


class FileType(enum.Enum):
    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    OTHER = "other"


class FileWatchEventType(enum.Enum):
    Unknown = "Unknown"
    Access = "Access"
    Create = "Create"
    Modify = "Modify"
    Remove = "Remove"


@dataclass(frozen=True)
class FileWatchEvent:
    """A change under a watched path (``sb.watch``, ``filesystem.watch``)."""

    paths: list[str]
    type: FileWatchEventType


@dataclass(frozen=True)
class FileInfo:
    """What ``list_files`` and ``stat`` report of a path (Modal's ``modal.types.FileInfo``):
    ``mode`` its permission bits, ``permissions`` them as ``ls -l`` shows them, ``owner``
    and ``group`` the names the sandbox's own ``/etc/passwd`` and ``/etc/group`` give its
    ids (the number where there is none)."""

    name: str
    path: str
    type: FileType
    size: int
    mode: int
    permissions: str
    owner: str
    group: str
    modified_time: float
    symlink_target: str | None

    def is_file(self) -> bool:
        return self.type is FileType.FILE

    def is_dir(self) -> bool:
        return self.type is FileType.DIRECTORY

    def is_symlink(self) -> bool:
        return self.type is FileType.SYMLINK


#: The name hutch gave it before Modal's ``FileInfo``.
FileEntry = FileInfo

_TYPE_BITS = {FileType.FILE: stat.S_IFREG, FileType.DIRECTORY: stat.S_IFDIR,
              FileType.SYMLINK: stat.S_IFLNK, FileType.OTHER: 0}


def _entry(doc: dict[str, Any], path: str | None = None) -> FileInfo:
    kind = FileType(doc["type"])
    shown = stat.filemode(_TYPE_BITS[kind] | doc["mode"])
    return FileInfo(doc["name"], path if path is not None else doc["name"], kind, doc["size"],
                    doc["mode"], shown if kind is not FileType.OTHER else "?" + shown[1:],
                    str(doc.get("owner", doc.get("uid", ""))),
                    str(doc.get("group", doc.get("gid", ""))), doc["mtime"], doc.get("link"))


def listing(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The entries of a listing document; the engine streams it in batches, and a batch
    that failed (past its deadline) ends it with an ``error`` body, raised here."""
    error = doc.get("error")
    if isinstance(error, dict):
        raise error_for(str(error.get("type")), str(error.get("message")))
    entries: list[dict[str, Any]] = doc["entries"]
    return entries


def _umask() -> int:
    """This process's umask, read without changing it (``os.umask`` sets it, for every
    thread, even to read it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _check_path(path: object) -> str:
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str) or not path or "\0" in path:
        raise InvalidError(f"a sandbox path must be a non-empty string, got {path!r}")
    return path


class SandboxFilesystem:
    """Files of one sandbox (``sb.filesystem``)."""

    def __init__(self, sandbox_id: str, verbose: bool = False) -> None:
        self._base = urls.SANDBOX_FS.format(sandbox_id=sandbox_id)
        self._sandbox_id = sandbox_id
        self._verbose = verbose

    def _log(self, operation: str, path: str) -> None:
        if self._verbose:
            output.log_file_operation(self._sandbox_id, operation, path)

    async def _stream(self, path: str, offset: int = 0,
                      length: int | None = None) -> AsyncIterator[bytes]:
        params: dict[str, Any] = {"path": path, "offset": offset}
        if length is not None:
            params["length"] = length
        async for chunk in client().stream_bytes(self._base + urls.FS_FILE, params):
            yield chunk

    async def _put(self, path: str, content: Any, mode: str = "w",
                   offset: int = 0, parents: bool = False) -> FileEntry:
        """Write ``content`` to ``path``; ``parents``: make missing directories first."""
        params: dict[str, Any] = {"path": path, "mode": mode, "offset": offset}
        if parents:
            params["parents"] = True
        doc = await client().request("PUT", self._base + urls.FS_FILE, content=content,
                                     params=params)
        return _entry(doc)

    @synchronize
    async def read_bytes(self, remote_path: str) -> bytes:
        path = _check_path(remote_path)
        self._log("read", path)
        return b"".join([chunk async for chunk in self._stream(path)])

    @synchronize
    async def read_text(self, remote_path: str) -> str:
        return (await self.read_bytes.aio(remote_path)).decode()

    @synchronize
    async def write_bytes(self, data: bytes, remote_path: str) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        path = _check_path(remote_path)
        self._log("write", path)
        await self._put(path, bytes(data), parents=True)  # as Modal's: parents are made

    @synchronize
    async def write_text(self, data: str, remote_path: str) -> None:
        if not isinstance(data, str):
            raise TypeError(f"data must be str, not {type(data).__name__}")
        await self.write_bytes.aio(data.encode(), remote_path)

    @synchronize
    async def list_files(self, remote_path: str) -> list[FileInfo]:
        path = _check_path(remote_path)
        self._log("list", path)
        doc = await client().request("GET", self._base + urls.FS_LIST, params={"path": path})
        return [_entry(e, posixpath.join(path, e["name"])) for e in listing(doc)]

    @synchronize
    async def stat(self, remote_path: str) -> FileInfo:
        path = _check_path(remote_path)
        self._log("stat", path)
        return _entry(await client().request("GET", self._base + urls.FS_STAT,
                                             params={"path": path}), path)

    @synchronize
    async def make_directory(self, remote_path: str, *, create_parents: bool = True) -> None:
        path = _check_path(remote_path)
        self._log("mkdir", path)
        await client().request("POST", self._base + urls.FS_MKDIR,
                               json_body={"path": path, "parents": bool(create_parents)})

    @synchronize
    async def remove(self, remote_path: str, *, recursive: bool = False) -> None:
        path = _check_path(remote_path)
        self._log("remove", path)
        await client().request("POST", self._base + urls.FS_REMOVE,
                               json_body={"path": path, "recursive": bool(recursive)})

    @synchronize_generator
    async def watch(self, remote_path: str, *,
                    filter: list[FileWatchEventType] | None = None,
                    recursive: bool = False,
                    timeout: float | None = None) -> AsyncIterator[FileWatchEvent]:
        """Changes under a path as they happen (inotify in the engine), until ``timeout``
        seconds have passed or the sandbox ends; ``filter`` keeps only those types."""
        path = _check_path(remote_path)
        params: dict[str, Any] = {"path": path, "recursive": bool(recursive)}
        if timeout is not None:
            params["timeout"] = timeout
        wanted = set(filter) if filter else None
        async for event in client().stream_events(self._base + urls.FS_WATCH, params):
            kind = FileWatchEventType(str(event["type"]).capitalize())
            if wanted is None or kind in wanted:
                yield FileWatchEvent([str(event["path"])], kind)

    @synchronize
    async def copy_from_local(self, local_path: str | os.PathLike[str],
                              remote_path: str) -> None:
        """Upload a local file, streamed (never held in memory)."""
        path = _check_path(remote_path)
        local = Path(local_path)
        if not local.is_file():
            raise FileNotFoundError(f"no local file {str(local)!r}")
        self._log("write", path)

        async def chunks() -> AsyncIterator[bytes]:
            async with await anyio.open_file(local, "rb") as f:
                while data := await f.read(CHUNK):
                    yield data

        await self._put(path, chunks(), parents=True)

    @synchronize
    async def copy_to_local(self, remote_path: str,
                            local_path: str | os.PathLike[str]) -> None:
        """Download a file into a local one, streamed; its missing parent directories are
        made.  A new file, or a regular file that only this name links to, appears whole or
        not at all: it is written beside the target (0600) and renamed over it, keeping
        the old file's permissions.  Anything else (a symlink, a device, a file with other
        hard links) is written into as ``open(local, "wb")`` would: replacing it would
        change what the name means."""
        path = _check_path(remote_path)
        self._log("read", path)
        local = Path(local_path)
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            before: os.stat_result | None = local.lstat()
        except FileNotFoundError:
            before = None
        if before is not None and stat.S_ISDIR(before.st_mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(local))
        chunks = self._stream(path)
        first = await anext(chunks, b"")  # a missing file fails before the local one opens
        if before is not None and (not stat.S_ISREG(before.st_mode) or before.st_nlink > 1):
            async with await anyio.open_file(local, "wb") as f:
                await f.write(first)
                async for chunk in chunks:
                    await f.write(chunk)
            return
        partial = local.with_name(f".hutch-{secrets.token_hex(8)}.part")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)  # (made by this call: its to remove)
        try:
            async with await anyio.open_file(fd, "wb") as f:
                await f.write(first)
                async for chunk in chunks:
                    await f.write(chunk)
                os.fchmod(fd, stat.S_IMODE(before.st_mode) if before is not None
                          else 0o666 & ~_umask())  # (what open() would have made)
            os.replace(partial, local)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
