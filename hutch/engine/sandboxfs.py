"""A sandbox's files, reached from the engine without ever leaving the sandbox's root.

Every path is resolved by the kernel with openat2(2) and ``RESOLVE_IN_ROOT`` against a
directory descriptor of ``/proc/<init pid>/root``: the sandbox's own root *with its mounts*
(volumes, tmpfs), in which ``..``, absolute symlinks and ``/proc/self/root``-style magic
links planted by code in the sandbox all stay inside (``RESOLVE_NO_MAGICLINKS`` refuses the
last).  No string checks, no window between a check and the use: what is opened is what
the kernel resolved.  Operations on a last path component (mkdir, unlink, rename) run on
the descriptor of its resolved parent.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import ClassVar

import trio

from hutch.engine.errors import EngineError, Invalid

SYS_OPENAT2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
PROC_SUPER_MAGIC = 0x9FA0
SYSFS_MAGIC = 0x62656572


def _fs_magic(fd: int) -> int:
    """The filesystem type of an open file (fstatfs(2)'s ``f_type``)."""
    buf = ctypes.create_string_buffer(256)
    if _libc.fstatfs(ctypes.c_int(fd), buf) != 0:
        return 0
    return int.from_bytes(buf.raw[:ctypes.sizeof(ctypes.c_long)], "little", signed=True)


def openat2(dirfd: int, path: str, flags: int, mode: int = 0,
            resolve: int = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, resolve)
    while True:
        fd = _libc.syscall(SYS_OPENAT2, ctypes.c_int(dirfd), os.fsencode(path),
                           ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err not in (errno.EINTR, errno.EAGAIN):
            raise OSError(err, os.strerror(err), path)


class FileError(EngineError):
    """A file operation's error, typed like the builtin ``OSError`` subclasses."""

    status = 400
    TYPES: ClassVar[dict[int, tuple[str, int]]] = {
        errno.ENOENT: ("file_not_found", 404), errno.EISDIR: ("is_a_directory", 400),
        errno.ENOTDIR: ("not_a_directory", 400), errno.EACCES: ("permission_denied", 403),
        errno.EPERM: ("permission_denied", 403), errno.EEXIST: ("file_exists", 409),
        errno.ENOTEMPTY: ("directory_not_empty", 409), errno.ELOOP: ("permission_denied", 403),
        errno.EXDEV: ("permission_denied", 403), errno.EROFS: ("permission_denied", 403),
        errno.ETXTBSY: ("permission_denied", 403), errno.EBUSY: ("permission_denied", 403),
    }

    def __init__(self, exc: OSError, path: str) -> None:
        kind, status = self.TYPES.get(exc.errno or 0, ("file_error", 400))
        super().__init__(f"{exc.strerror}: {path!r}")
        self.type = kind
        self.status = status


@dataclass(frozen=True)
class Entry:
    name: str
    type: str  # file, directory, symlink, other
    size: int
    mode: int
    mtime: float


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def entry(name: str, st: os.stat_result) -> Entry:
    return Entry(name, _kind(st.st_mode), st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime)


class SandboxFS:
    """Files under a root that paths cannot leave: a sandbox's (``/proc/<pid>/root``, its
    mounts included) or a volume's directory."""

    def __init__(self, root: str, workdir: str = "/") -> None:
        try:
            self.root = os.open(root, os.O_PATH | os.O_DIRECTORY)
        except OSError as exc:
            raise FileError(exc, "/") from exc
        self.workdir = workdir

    def close(self) -> None:
        os.close(self.root)

    def __enter__(self) -> SandboxFS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def path(self, path: str) -> str:
        """``path`` inside the sandbox: relative paths are relative to its workdir."""
        if not path or "\0" in path:
            raise Invalid("a path must be a non-empty string without NUL bytes")
        return path if path.startswith("/") else f"{self.workdir.rstrip('/')}/{path}"

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        full = self.path(path)
        try:
            return openat2(self.root, full, flags, mode)
        except OSError as exc:
            raise FileError(exc, full) from exc

    def _parent(self, path: str) -> tuple[int, str]:
        """A descriptor of the resolved parent directory, and the last component."""
        full = self.path(path).rstrip("/") or "/"
        parent, _, name = full.rpartition("/")
        if name in ("", ".", ".."):
            raise Invalid(f"{full!r} names no entry that can be changed")
        return self.open(parent or "/", os.O_PATH | os.O_DIRECTORY), name

    def open_regular(self, path: str, flags: int, mode: int = 0o644) -> int:
        """Open a regular file only: never blocks on a FIFO (``O_NONBLOCK``), refuses
        devices and sockets, and refuses /proc and /sys, whose files would describe the
        engine's namespaces rather than the sandbox's."""
        fd = self.open(path, flags | os.O_NONBLOCK, mode)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise FileError(IsADirectoryError(errno.EISDIR, "Is a directory"),
                                self.path(path))
            if not stat.S_ISREG(st.st_mode):
                raise FileError(OSError(errno.EINVAL, "Not a regular file"), self.path(path))
            if _fs_magic(fd) in (PROC_SUPER_MAGIC, SYSFS_MAGIC):
                raise FileError(PermissionError(
                    errno.EACCES, "procfs and sysfs files show the reader's view; read them "
                    "with exec"), self.path(path))
            os.set_blocking(fd, True)
            return fd
        except BaseException:
            os.close(fd)
            raise

    def stat(self, path: str) -> Entry:
        fd = self.open(path, os.O_PATH | os.O_NOFOLLOW)
        try:
            return entry(os.path.basename(self.path(path).rstrip("/")) or "/", os.fstat(fd))
        finally:
            os.close(fd)

    def list(self, path: str) -> list[Entry]:
        fd = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            entries = []
            for name in sorted(os.listdir(fd)):
                try:
                    entries.append(entry(name, os.stat(name, dir_fd=fd, follow_symlinks=False)))
                except FileNotFoundError:
                    continue  # removed while listing
            return entries
        finally:
            os.close(fd)

    def mkdir(self, path: str, parents: bool = False, mode: int = 0o755) -> None:
        if parents:
            parts = [p for p in self.path(path).split("/") if p]
            for i in range(1, len(parts) + 1):
                sub = "/" + "/".join(parts[:i])
                try:
                    self._mkdir_one(sub, mode)
                except FileError as exc:
                    if exc.type != "file_exists":
                        raise
                    # exists: fine if it is (or links, inside the sandbox, to) a directory
                    try:
                        os.close(self.open(sub, os.O_PATH | os.O_DIRECTORY))
                    except FileError as inner:
                        raise FileError(NotADirectoryError(errno.ENOTDIR, "Not a directory"),
                                        sub) from inner
            return
        self._mkdir_one(path, mode)

    def _mkdir_one(self, path: str, mode: int) -> None:
        parent, name = self._parent(path)
        try:
            os.mkdir(name, mode, dir_fd=parent)
        except OSError as exc:
            raise FileError(exc, self.path(path)) from exc
        finally:
            os.close(parent)

    def remove(self, path: str, recursive: bool = False) -> None:
        parent, name = self._parent(path)
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(name, dir_fd=parent)
            elif recursive:
                shutil.rmtree(name, dir_fd=parent)  # fd-based: never follows symlinks
            else:
                os.rmdir(name, dir_fd=parent)
        except OSError as exc:
            raise FileError(exc, self.path(path)) from exc
        finally:
            os.close(parent)

    def walk_files(self, path: str) -> Iterator[tuple[str, int]]:
        """``(relative path, descriptor)`` of every regular file under a directory."""
        top = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for dirpath, _, files, dirfd in os.fwalk(".", dir_fd=top):
                for name in files:
                    try:
                        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dirfd)
                    except OSError:
                        continue  # a symlink or something that went away
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        os.close(fd)
                        continue
                    yield os.path.normpath(f"{dirpath}/{name}"), fd
        finally:
            os.close(top)


async def stream_fd(fd: int, offset: int = 0, length: int | None = None,
                    chunk: int = 1 << 20) -> AsyncIterator[bytes]:
    """The bytes of an open file from ``offset`` (``length`` of them, or to the end), read
    in worker threads a chunk at a time; closes ``fd`` when done."""
    try:
        position, left = offset, length
        while left is None or left > 0:
            size = chunk if left is None else min(chunk, left)
            data = await trio.to_thread.run_sync(os.pread, fd, size, position)
            if not data:
                return
            position += len(data)
            if left is not None:
                left -= len(data)
            yield data
    finally:
        os.close(fd)


async def write_stream(fd: int, chunks: AsyncIterator[bytes]) -> None:
    """Write every chunk of ``chunks`` to ``fd`` as it arrives (a request body)."""
    async for chunk in chunks:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]
