"""A sandbox's files, reached from the engine without ever leaving the sandbox's root.

Why the kernel resolves every path: code in the sandbox plants ``..``, absolute symlinks
and magic links, so each path is resolved by openat2(2) with ``RESOLVE_IN_ROOT |
RESOLVE_NO_MAGICLINKS`` against ``/proc/<init pid>/root`` (the sandbox's root with its
mounts), with no string checks and no window between check and use.  Nothing here waits
on code in the sandbox: every open that is not ``O_PATH`` is ``O_NONBLOCK`` (a lease
answers ``file_busy`` at once, not after the kernel's 45 s), and files are opened
``O_PATH``, checked to be regular and reopened from that inode (FIFOs are never opened).
Details: docs/design.md, "Files and volumes"; docs/security.md, "The engine's own
processes"; docs/limits.md, "file calls against a hostile sandbox".
"""

from __future__ import annotations

import ctypes
import errno
import math
import operator
import os
import stat
from dataclasses import dataclass
from typing import ClassVar

from hutch.api.errors import ErrorKind
from hutch.engine.errors import EngineError, Invalid
from hutch.engine.files.fileops import check_deadline
from hutch.imagebuild import inroot

RESOLVE_NO_MAGICLINKS = inroot.RESOLVE_NO_MAGICLINKS
RESOLVE_IN_ROOT = inroot.RESOLVE_IN_ROOT

_libc = ctypes.CDLL(None, use_errno=True)
PROC_SUPER_MAGIC = 0x9FA0
SYSFS_MAGIC = 0x62656572


def _fs_magic(fd: int) -> int:
    """The filesystem type of an open file (fstatfs(2)'s ``f_type``)."""
    buf = ctypes.create_string_buffer(256)
    if _libc.fstatfs(ctypes.c_int(fd), buf) != 0:
        return 0
    return int.from_bytes(buf.raw[:ctypes.sizeof(ctypes.c_long)], "little", signed=True)


#: What a listing returns at most, and how deep a recursive removal goes.
MAX_LIST_ENTRIES = 1_000_000
MAX_REMOVE_DEPTH = 128
#: Entries handled between two deadline checks of a walk.
_CHECK_EVERY = 256


def openat2(dirfd: int, path: str, flags: int, mode: int = 0,
            resolve: int = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS) -> int:
    """``path`` opened inside the root ``dirfd`` (:func:`hutch.imagebuild.inroot.openat2`,
    retried a bounded number of times: a leased file answers ``EAGAIN``)."""
    return inroot.openat2(dirfd, path, flags, resolve, mode)


class FileError(EngineError):
    """A file operation's error, typed like the builtin ``OSError`` subclasses."""

    TYPES: ClassVar[dict[int, ErrorKind]] = {
        errno.ENOENT: "file_not_found", errno.EISDIR: "is_a_directory",
        errno.ENOTDIR: "not_a_directory", errno.EACCES: "permission_denied",
        errno.EPERM: "permission_denied", errno.EEXIST: "file_exists",
        errno.ENOTEMPTY: "directory_not_empty", errno.ELOOP: "permission_denied",
        errno.EXDEV: "permission_denied", errno.EROFS: "permission_denied",
        errno.ETXTBSY: "permission_denied", errno.EBUSY: "permission_denied",
        errno.EAGAIN: "file_busy",
    }
    LEASED = ("held by a lease of a process in the sandbox (fcntl F_SETLEASE), which the "
              "engine does not wait for; try again later")

    def __init__(self, exc: OSError, path: str) -> None:
        reason = self.LEASED if exc.errno == errno.EAGAIN else exc.strerror
        super().__init__(f"{reason}: {path!r}")
        self.type = self.TYPES.get(exc.errno or 0, "file_error")


@dataclass(frozen=True)
class Entry:
    name: str
    type: str  # file, directory, symlink, other
    size: int
    mode: int
    mtime: float
    uid: int = 0  # as the engine sees them (a sandbox's own ids: hutch.engine.routes.files)
    gid: int = 0
    link: str | None = None  # a symlink's target


_SPECIAL = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device",
            stat.S_IFBLK: "a device", stat.S_IFLNK: "a symbolic link"}


def not_regular(mode: int, path: str) -> FileError:
    """The error for reading or writing something that is not a regular file."""
    what = _SPECIAL.get(stat.S_IFMT(mode), "not a file")
    return FileError(OSError(errno.EINVAL, f"Not a regular file ({what}): only regular "
                             "files are read or written"), path)


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def entry(name: str, st: os.stat_result, link: str | None = None) -> Entry:
    return Entry(name, _kind(st.st_mode), st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime,
                 st.st_uid, st.st_gid, link)


def _link(name: str, dirfd: int, st: os.stat_result) -> str | None:
    """The target of a symlink (``name`` in ``dirfd``; ``""``: ``dirfd`` itself), read
    without following it; None for anything else, or a link gone meanwhile."""
    if not stat.S_ISLNK(st.st_mode):
        return None
    try:
        return os.readlink(name, dir_fd=dirfd)
    except OSError:
        return None


class SandboxFS:
    """Files under a root that paths cannot leave: a sandbox's (``/proc/<pid>/root``, its
    mounts included) or a volume's directory."""

    def __init__(self, root: str, workdir: str = "/", owner: int | None = None) -> None:
        """``owner``: the id of the sandbox's root where it has ids of its own; what is
        made here belongs to it (as if its root had made it), not to the engine."""
        try:
            self.root = os.open(root, os.O_PATH | os.O_DIRECTORY)
        except OSError as exc:
            raise FileError(exc, "/") from exc
        self.workdir = workdir
        self.owner = owner

    def close(self) -> None:
        os.close(self.root)

    def dup(self) -> SandboxFS:
        """The same root through a descriptor of its own (for a worker thread's step,
        which may outlive the caller's handle)."""
        copy = object.__new__(SandboxFS)
        copy.root = os.dup(self.root)
        copy.workdir = self.workdir
        copy.owner = self.owner
        return copy

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
        """Open inside the root; never blocks (``O_NONBLOCK`` unless ``O_PATH``)."""
        full = self.path(path)
        if not flags & os.O_PATH:
            flags |= os.O_NONBLOCK
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
        """Open a regular file only, without ever waiting: what the path names is first
        opened ``O_PATH`` and checked (FIFOs, sockets and devices are refused unopened,
        so none can block or have side effects), then that inode is reopened through
        ``/proc/self/fd`` (no second lookup to race); a new file is created
        ``O_NONBLOCK`` and checked after.  /proc and /sys are refused too: their files
        would describe the engine's namespaces rather than the sandbox's."""
        full = self.path(path)
        try:
            probe = self.open(path, os.O_PATH)
        except FileError as exc:
            if not (flags & os.O_CREAT and exc.type == "file_not_found"):
                raise
            # O_NONBLOCK: a FIFO swapped in cannot block.  Where the new file gets an owner,
            # O_EXCL tells that this call made it (a file the sandbox made meanwhile keeps
            # its own).
            exclusive = os.O_EXCL if self.owner is not None else 0
            try:
                fd = self.open(path, flags | exclusive, mode)
            except FileError as raced:
                if not exclusive or flags & os.O_EXCL or raced.type != "file_exists":
                    raise
                return self.open_regular(path, flags & ~os.O_CREAT, mode)
            if self.owner is not None:  # made now, by this call
                os.fchown(fd, self.owner, self.owner)
        else:
            try:
                if flags & os.O_CREAT and flags & os.O_EXCL:
                    raise FileError(FileExistsError(errno.EEXIST, "File exists"), full)
                self._check_regular(probe, full)
                try:
                    fd = os.open(f"/proc/self/fd/{probe}",
                                 (flags & ~(os.O_CREAT | os.O_EXCL)) | os.O_NONBLOCK
                                 | os.O_NOCTTY | os.O_CLOEXEC)
                except OSError as exc:
                    raise FileError(exc, full) from exc
            finally:
                os.close(probe)
        try:
            self._check_regular(fd, full)
            os.set_blocking(fd, True)
            return fd
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _check_regular(fd: int, path: str) -> None:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise FileError(IsADirectoryError(errno.EISDIR, "Is a directory"), path)
        if not stat.S_ISREG(mode):
            raise not_regular(mode, path)
        if _fs_magic(fd) in (PROC_SUPER_MAGIC, SYSFS_MAGIC):
            raise FileError(PermissionError(
                errno.EACCES, "procfs and sysfs files show the reader's view; read them "
                "with exec"), path)

    def stat(self, path: str) -> Entry:
        fd = self.open(path, os.O_PATH | os.O_NOFOLLOW)
        try:
            st = os.fstat(fd)
            return entry(os.path.basename(self.path(path).rstrip("/")) or "/", st,
                         _link("", fd, st))
        finally:
            os.close(fd)

    def names(self, path: str, deadline: float) -> tuple[int, list[str]]:
        """An open directory and its entries' names, sorted (at most
        ``MAX_LIST_ENTRIES``); the caller closes the descriptor."""
        fd = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            names: list[str] = []
            with os.scandir(fd) as it:
                for item in it:
                    names.append(item.name)
                    if len(names) % _CHECK_EVERY == 0:
                        check_deadline(deadline, f"listing {self.path(path)!r}")
                        if len(names) > MAX_LIST_ENTRIES:
                            raise too_many(self.path(path))
            names.sort()
            return fd, names
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def entries(dirfd: int, names: list[str]) -> list[Entry]:
        """The entries of ``names`` in an open directory (those removed meanwhile left
        out): one batch of a listing."""
        found = []
        for name in names:
            try:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                found.append(entry(name, st, _link(name, dirfd, st)))
            except FileNotFoundError:
                continue
        return found

    def walk(self, path: str, deadline: float) -> list[tuple[str, Entry]]:
        """``(path, entry)`` of everything under a directory, sorted by path (at most
        ``MAX_LIST_ENTRIES``); symlinks are listed, never followed."""
        top = self.path(path)
        found: list[tuple[str, Entry]] = []
        pending = [path]  # paths as the caller named them, the entries' paths built on it
        while pending:
            here = pending.pop()
            fd = self.open(here, os.O_RDONLY | os.O_DIRECTORY)
            try:
                with os.scandir(fd) as it:
                    for item in it:
                        child = f"{here.rstrip('/')}/{item.name}"
                        try:
                            st = item.stat(follow_symlinks=False)
                            found.append((child, entry(item.name, st, _link(item.name, fd, st))))
                        except FileNotFoundError:
                            continue
                        if item.is_dir(follow_symlinks=False):
                            pending.append(child)
                        if len(found) % _CHECK_EVERY == 0:
                            check_deadline(deadline, f"listing {top!r}")
                            if len(found) > MAX_LIST_ENTRIES:
                                raise too_many(top)
            finally:
                os.close(fd)
        found.sort(key=operator.itemgetter(0))
        return found

    def mkdir(self, path: str, parents: bool = False, mode: int = 0o755) -> None:
        if parents:
            parts = [p for p in self.path(path).split("/") if p]
            for i in range(1, len(parts) + 1):
                if parts[i - 1] in (".", ".."):
                    continue  # names a directory already there (mkdir -p /a/../b makes /b)
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
            if self.owner is not None:  # never through a symlink swapped in since
                os.chown(name, self.owner, self.owner, dir_fd=parent, follow_symlinks=False)
        except OSError as exc:
            raise FileError(exc, self.path(path)) from exc
        finally:
            os.close(parent)

    def remove(self, path: str, recursive: bool = False, deadline: float = math.inf
               ) -> None:
        parent, name = self._parent(path)
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(name, dir_fd=parent)
            elif recursive:
                _remove_tree(parent, name, self.path(path), deadline)
            else:
                os.rmdir(name, dir_fd=parent)
        except OSError as exc:
            raise FileError(exc, self.path(path)) from exc
        finally:
            os.close(parent)


def too_many(path: str) -> FileError:
    return FileError(OSError(errno.EFBIG, f"More than {MAX_LIST_ENTRIES} entries; list "
                             "them with exec"), path)


def _open_dir(parent: int, name: str) -> tuple[int, list[str]]:
    """A subdirectory (never through a symlink) and its names, last first."""
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK
                 | os.O_CLOEXEC, dir_fd=parent)
    try:
        return fd, sorted(os.listdir(fd), reverse=True)
    except BaseException:
        os.close(fd)
        raise


def _remove_tree(parent: int, name: str, path: str, deadline: float) -> None:
    """Remove a directory and everything in it through descriptors (never following a
    symlink), without recursion: a stack of open directories, at most
    ``MAX_REMOVE_DEPTH`` deep, checking ``deadline`` as it goes (300,000 files take a few
    seconds)."""
    stack: list[tuple[int, list[str], int, str]] = []
    done = 0
    try:
        stack.append((*_open_dir(parent, name), parent, name))
        while stack:
            fd, left, up, here = stack[-1]
            if not left:
                stack.pop()
                os.close(fd)
                os.rmdir(here, dir_fd=up)
                continue
            child = left.pop()
            done += 1
            if done % _CHECK_EVERY == 0:
                check_deadline(deadline, f"removing {path!r} ({done} entries removed)")
            try:
                if not stat.S_ISDIR(os.stat(child, dir_fd=fd, follow_symlinks=False).st_mode):
                    os.unlink(child, dir_fd=fd)
                    continue
                if len(stack) >= MAX_REMOVE_DEPTH:
                    raise FileError(OSError(errno.EINVAL, f"Directories nested deeper than "
                                            f"{MAX_REMOVE_DEPTH} levels; remove them with "
                                            "exec"), path)
                stack.append((*_open_dir(fd, child), fd, child))
            except FileNotFoundError:
                continue  # removed meanwhile
    finally:
        for fd, *_ in stack:
            os.close(fd)
