"""Thin ctypes bindings for the Linux calls Python 3.11's ``os`` module lacks.

unshare(2), mount(2), umount2(2), prctl(2) and inotify(7) are all the engine needs to own its
namespaces, mount overlay root filesystems and follow log files without a helper.
Errors come back as ``OSError`` with the real errno, like every ``os`` call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000

MS_NOSUID = 0x2
MS_NOEXEC = 0x8
MS_RDONLY = 0x1
MS_NODEV = 0x4
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SHARED = 1 << 20

MNT_DETACH = 0x2

IN_MODIFY = 0x2
IN_CLOSE_WRITE = 0x8
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36

# the new mount API (x86_64 and aarch64 share these numbers)
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
OPEN_TREE_CLONE = 1
AT_EMPTY_PATH = 0x1000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_IDMAP = 0x00100000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
AT_RECURSIVE = 0x8000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def unshare(flags: int) -> None:
    """Move the calling thread (or, for some flags, the process) into new namespaces."""
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    """Move the calling thread into the namespace of ``fd`` (a namespace file or a pidfd,
    whose process's namespaces of the ``nstype`` kinds are joined)."""
    _check(_libc.setns(fd, nstype), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), f"mount {target}")


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


def restrict_mount(target: str, attrs: int) -> None:
    """Add the ``MOUNT_ATTR_*`` flags ``attrs`` (read-only, nosuid, nodev) to the mount at
    ``target`` and every mount under it (``mount_setattr``, ``AT_RECURSIVE``).  It sets
    only what it names and clears nothing, atime flags included, so unlike a remount it
    cannot fail on a flag a more privileged namespace locked."""
    fd = os.open(target, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        attr = _MountAttr(attrs, 0, 0, 0)
        _check(_libc.syscall(SYS_MOUNT_SETATTR, fd, b"", AT_EMPTY_PATH | AT_RECURSIVE,
                             ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))),
               f"restricting {target}")
    finally:
        os.close(fd)


def idmapped_bind(source: str, target: str, userns_fd: int) -> None:
    """Bind ``source`` at ``target`` (an existing directory), its owners seen through the
    id map of the user namespace ``userns_fd``: a file owned by id N of the source's file
    system shows as the id N maps to there.  The kernel allows it only to a holder of
    CAP_SYS_ADMIN in the namespace that owns the source's file system (a tmpfs the engine
    mounted, not the host's disk, for a rootless engine) and on file systems that support
    it (not overlayfs)."""
    fd = _libc.syscall(SYS_OPEN_TREE, -100, os.fsencode(source),
                       OPEN_TREE_CLONE | os.O_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"open_tree {source}: {os.strerror(err)}")
    try:
        attr = _MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
        _check(_libc.syscall(SYS_MOUNT_SETATTR, fd, b"", AT_EMPTY_PATH, ctypes.byref(attr),
                             ctypes.c_size_t(ctypes.sizeof(attr))),
               f"idmapping {source}")
        _check(_libc.syscall(SYS_MOVE_MOUNT, fd, b"", -100, os.fsencode(target),
                             MOVE_MOUNT_F_EMPTY_PATH), f"move_mount {target}")
    finally:
        os.close(fd)


def set_child_subreaper() -> None:
    _check(_libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")


def set_non_dumpable() -> None:
    """Make this process (and what it forks, until an ``execve``) non-dumpable: only a
    holder of CAP_SYS_PTRACE in the user namespace it was started in may then trace it, read
    or write its memory (``/proc/PID/mem``, ``process_vm_*``) or take its file descriptors.
    Sandbox processes share the engine's uid, so without this the uid check alone lets
    them in wherever they can name one of the engine's processes."""
    _check(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")


def inotify_init() -> int:
    """A non-blocking inotify descriptor; the caller closes it."""
    fd: int = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"inotify_init1: {os.strerror(err)}")
    return fd


def inotify_add(fd: int, path: str, mask: int) -> int:
    """Watch ``path`` on the inotify descriptor ``fd``; returns the watch descriptor."""
    wd: int = _libc.inotify_add_watch(fd, os.fsencode(path), mask)
    if wd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
    return wd


def inotify_remove(fd: int, wd: int) -> None:
    """Stop watch ``wd`` (one the kernel dropped already, its file gone, is no error)."""
    _libc.inotify_rm_watch(fd, wd)


def inotify_watch(paths: list[str], mask: int) -> int:
    """A non-blocking inotify descriptor watching ``paths``; the caller closes it."""
    fd: int = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"inotify_init1: {os.strerror(err)}")
    for path in paths:
        if _libc.inotify_add_watch(fd, os.fsencode(path), mask) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
    return fd
