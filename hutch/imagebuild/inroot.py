"""Writing a tar's entries under a root directory that no entry can leave.

Why the kernel resolves every path: an image or an API client may name anything, so each
path is resolved with openat2(2) against a descriptor of its root, never joined to a host
path as a string.  ``follow=False`` (image layers, into an empty scratch directory) refuses
a name through any symlink (``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS``); ``follow=True`` (a
copy step into a mounted image) follows the image's symlinks as the sandbox would see them
(``RESOLVE_IN_ROOT``).  Last components are made ``O_NOFOLLOW | O_EXCL`` at their parent's
descriptor; ``..`` names, device nodes and hard links out are refused, and an entry that
claims more than the free space fails at once.
Details: docs/security.md, "Paths from the API and from images".
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import tarfile
from dataclasses import dataclass

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
SYS_OPENAT2 = 437
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
#: Unpacking stops when it would leave less than this share of the file system free
#: (or ``MIN_RESERVE`` bytes, whichever is more), or fewer than this share of inodes.
RESERVE_SHARE = 0.01
MIN_RESERVE = 256 << 20
CHUNK = 1 << 20
#: Dangling symlinks followed while making one directory (the kernel's own limit).
MAX_HOPS = 40


class UnsafeEntry(RuntimeError):
    """An entry (or a path) that would leave its root, or cannot be written safely."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


#: Times an open answered ``EAGAIN`` or ``EINTR`` is tried again.  ``RESOLVE_IN_ROOT``
#: answers ``EAGAIN`` when a rename raced a ``..`` (rare: tried again at once), and so
#: does an ``O_NONBLOCK`` open of a leased file, for as long as the lease holder wants:
#: an unbounded retry spun the engine for the whole 45 s lease-break-time.
OPEN_RETRIES = 8


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): ``path`` resolved from ``dirfd`` under the ``RESOLVE_*`` rules, never
    making it the caller's controlling terminal.  The one binding of it: the engine's file
    API (:mod:`hutch.engine.files.sandboxfs`) uses it too."""
    if not flags & os.O_PATH:  # openat2 refuses flags O_PATH ignores
        flags |= os.O_NOCTTY
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, resolve)
    err = errno.EAGAIN
    for _ in range(OPEN_RETRIES):
        fd = _libc.syscall(SYS_OPENAT2, ctypes.c_int(dirfd), os.fsencode(path),
                           ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err not in (errno.EINTR, errno.EAGAIN):
            break
    raise OSError(err, os.strerror(err), path)


def split(name: str, what: str = "name") -> list[str]:
    """The components of ``name``: a leading ``/`` and ``.`` dropped, ``..`` refused."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeEntry(f"{what} {name!r} climbs out with '..'")
    if "\0" in name:
        raise UnsafeEntry(f"{what} {name!r} contains a NUL byte")
    return parts


def components(path: str) -> list[str]:
    """``path``'s components for in-root resolution: ``..`` kept, for the kernel to resolve
    (at the root it stays there: ``/../../x`` is ``/x``)."""
    if "\0" in path:
        raise UnsafeEntry(f"path {path!r} contains a NUL byte")
    return [p for p in path.split("/") if p not in ("", ".")]


@dataclass
class Space:
    """Free space and inodes a write may still use on a file system (``fd`` on it)."""

    fd: int
    share: float = RESERVE_SHARE
    minimum: int = MIN_RESERVE

    def claim(self, size: int) -> None:
        """Refuse a file of ``size`` bytes that would eat into the reserve."""
        st = os.fstatvfs(self.fd)
        reserve = max(self.minimum, int(st.f_blocks * st.f_frsize * self.share))
        free = st.f_bavail * st.f_frsize
        if size > free - reserve:
            raise UnsafeEntry(f"{size} bytes do not fit: "
                              f"{max(free - reserve, 0)} bytes may still be written")
        if st.f_files and st.f_favail < st.f_files * self.share:
            raise UnsafeEntry("the file system is out of inodes")


class Extractor:
    """Writes tar members under the directory ``root_fd`` (see the module's rules)."""

    def __init__(self, root_fd: int, *, follow: bool, whiteouts: bool,
                 space: Space | None = None, owner: int | None = None) -> None:
        """``owner``: the id that directories :meth:`open_dir` makes belong to (a
        sandbox's root, where the sandbox has ids of its own), instead of the caller."""
        self.root = root_fd
        self.owner = owner
        self.follow = follow
        self.whiteouts = whiteouts
        self.space = space or Space(root_fd)
        self.resolve = RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV | (
            RESOLVE_IN_ROOT if follow else RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)

    # directories -------------------------------------------------------------------------
    def open_dir(self, parts: list[str], create: bool = True, hops: int = 0) -> int:
        """A descriptor of the directory ``parts`` under the root, made (0755) where
        missing; refused where a component is not a directory (or, without ``follow``,
        is a symlink).  With ``follow``, a symlink to a missing directory is followed
        inside the root and its target made, as ``mkdir -p`` in the sandbox would."""
        fd = os.dup(self.root)
        try:
            for i, part in enumerate(parts):
                path = "/".join(parts[: i + 1])
                try:
                    nfd = openat2(self.root, path, os.O_RDONLY | os.O_DIRECTORY, self.resolve)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                    except FileExistsError as exc:  # a symlink to nothing
                        if not self.follow or hops >= MAX_HOPS:
                            raise UnsafeEntry(f"{path!r} is a dangling symlink") from exc
                        link = os.readlink(part, dir_fd=fd)
                        start = [] if link.startswith("/") else parts[:i]
                        return self.open_dir([*start, *components(link), *parts[i + 1:]],
                                             create, hops + 1)
                    nfd = openat2(self.root, path, os.O_RDONLY | os.O_DIRECTORY, self.resolve)
                    if self.owner is not None:
                        os.fchown(nfd, self.owner, self.owner)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV, errno.EAGAIN):
                        raise UnsafeEntry(f"{path!r} is a symlink or not a directory, and no "
                                          "entry goes through one") from exc
                    raise
                os.close(fd)
                fd = nfd
            result, fd = fd, -1
            return result
        finally:
            if fd >= 0:
                os.close(fd)

    def make_dirs(self, path: str) -> int:
        """``mkdir -p`` of ``path`` in-root; a descriptor of it."""
        return self.open_dir(components(path) if self.follow else split(path, "path"))

    # members -----------------------------------------------------------------------------
    def extract_all(self, tar: tarfile.TarFile, under: list[str] | None = None) -> None:
        """Every member of ``tar``, in order, under the directory ``under`` (components)."""
        for member in tar:
            self.extract(tar, member, under or [])

    def extract(self, tar: tarfile.TarFile, member: tarfile.TarInfo, under: list[str]
                ) -> None:
        """One member; :class:`UnsafeEntry` names it when it cannot be written safely."""
        try:
            self._extract(tar, member, under)
        except UnsafeEntry as exc:
            raise UnsafeEntry(f"entry {member.name!r}: {exc}") from exc
        except OSError as exc:
            raise UnsafeEntry(f"entry {member.name!r}: {exc.strerror} "
                              f"({exc.filename or member.linkname or member.name})") from exc

    def _extract(self, tar: tarfile.TarFile, member: tarfile.TarInfo, under: list[str]
                 ) -> None:
        parts = [*under, *split(member.name, "its name")]
        if len(parts) == len(under):
            return  # the archive's own root ("./"): its directory exists already
        if member.ischr() or member.isblk() or member.isfifo():
            return  # device nodes come from the runtime's /dev, never from an image
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            raise UnsafeEntry(f"unknown entry type {member.type!r}")
        self.space.claim(member.size if member.isreg() else 0)  # inodes count too
        base = parts[-1]
        parent = self.open_dir(parts[:-1])
        try:
            if self.whiteouts and base.startswith(WHITEOUT_PREFIX):
                self._whiteout(parent, base)
            elif member.isdir():
                self._dir(parent, base, member)
            elif member.issym():
                self._remove(parent, base)
                os.symlink(member.linkname, base, dir_fd=parent)
                self._attrs(parent, base, member, None)
            elif member.islnk():
                self._hardlink(parent, base, member, under)
            else:
                self._file(tar, parent, base, member)
        finally:
            os.close(parent)

    def _whiteout(self, parent: int, base: str) -> None:
        if base == OPAQUE_MARKER:
            os.setxattr(parent, "user.overlay.opaque", b"y")
            return
        hidden = base[len(WHITEOUT_PREFIX):]
        if hidden in ("", ".", "..") or hidden.startswith(WHITEOUT_PREFIX):
            raise UnsafeEntry("a whiteout that names no file")
        self._remove(parent, hidden)
        os.mknod(hidden, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=parent)

    def _dir(self, parent: int, base: str, member: tarfile.TarInfo) -> None:
        try:
            st = os.stat(base, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode) and self.follow:
            return  # a symlink to a directory of the image stays (as `cp -r` keeps it)
        if st is None or not stat.S_ISDIR(st.st_mode):
            self._remove(parent, base)
            os.mkdir(base, 0o700, dir_fd=parent)
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
        try:
            self._attrs(parent, base, member, fd)
        finally:
            os.close(fd)

    def _file(self, tar: tarfile.TarFile, parent: int, base: str,
              member: tarfile.TarInfo) -> None:
        self._remove(parent, base)
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                     dir_fd=parent)
        try:
            data = tar.extractfile(member)
            if data is None:
                raise UnsafeEntry("a file without data")
            written = 0
            while chunk := data.read(CHUNK):
                written += len(chunk)
                if written > member.size:
                    raise UnsafeEntry("longer than its header says")
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            self._attrs(parent, base, member, fd)
        finally:
            os.close(fd)

    def _hardlink(self, parent: int, base: str, member: tarfile.TarInfo,
                  under: list[str]) -> None:
        target = [*under, *split(member.linkname, "hard link target")]
        if not target:
            raise UnsafeEntry("a hard link to the root")
        src = self.open_dir(target[:-1], create=False)
        try:
            st = os.stat(target[-1], dir_fd=src, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise UnsafeEntry("a hard link to a directory")
            self._remove(parent, base)
            os.link(target[-1], base, src_dir_fd=src, dst_dir_fd=parent,
                    follow_symlinks=False)
        finally:
            os.close(src)

    # helpers ------------------------------------------------------------------------------
    @staticmethod
    def _attrs(parent: int, base: str, member: tarfile.TarInfo, fd: int | None) -> None:
        """Owner, mode and mtime, on the descriptor (or the name itself, for symlinks)."""
        times = (member.mtime, member.mtime)
        try:  # an owner the user namespace does not map stays root, as tar leaves it
            if fd is None:
                os.chown(base, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
            else:
                os.fchown(fd, member.uid, member.gid)
        except (OSError, OverflowError):
            pass
        if fd is not None:
            os.fchmod(fd, member.mode & 0o7777)
        try:
            if fd is None:
                os.utime(base, times, dir_fd=parent, follow_symlinks=False)
            else:
                os.utime(fd, times)
        except (OSError, OverflowError):
            pass

    def _remove(self, parent: int, name: str) -> None:
        """Remove ``name`` in ``parent`` (a directory with all it holds), never following
        a symlink."""
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=parent)
            return
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
        try:
            for entry in os.listdir(fd):
                self._remove(fd, entry)
        finally:
            os.close(fd)
        os.rmdir(name, dir_fd=parent)


def open_root(path: str | os.PathLike[str]) -> int:
    """A descriptor of a root directory to extract under."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)
