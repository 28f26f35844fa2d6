"""Placing a mount into a running sandbox's mount namespace, and taking it out again.

Why a thread of its own: a mount made in the engine's namespace does not show in a
running container's (the sandbox's mounts are private copies), and ``move_mount`` only
attaches into the caller's own namespace.  ``setns`` into a mount namespace is refused
to a process whose threads share their file-system context (``EINVAL``), which every
thread of the engine does; a fresh thread that first unshares it (``unshare(CLONE_FS)``)
may join the sandbox's namespace alone, attach or detach there, and end, so the engine's
pooled threads never change namespace.  Measured here: starting and joining a thread
takes 0.09 ms, where a helper process (``python -c``) took 41 ms.

The mount is made beforehand in the engine's namespace and cloned detached
(``open_tree(OPEN_TREE_CLONE)``); the target is resolved inside the sandbox's root
(``openat2`` ``RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`` from a descriptor of the
namespace's root, :func:`namespace_root`) and the clone moved onto that descriptor, so a
symlink the sandbox swaps in cannot redirect it.  Detaching checks the mount id found at
the path against the one recorded when it was attached and unmounts through the resolved
descriptor (``fchdir`` + ``umount2(".")``), so only that mount can be taken away.
"""

from __future__ import annotations

import ctypes
import os
import posixpath
import threading
from collections.abc import Callable, Collection
from typing import TypeVar

from hutch.engine.kernel import linux
from hutch.imagebuild import inroot

CLONE_FS = 0x00000200
MOVE_MOUNT_T_EMPTY_PATH = 0x40
#: Where nothing may be mounted: the kernel's and the runtime's file systems.
FORBIDDEN = ("/proc", "/sys", "/dev")
_RESOLVE = inroot.RESOLVE_IN_ROOT | inroot.RESOLVE_NO_MAGICLINKS

T = TypeVar("T")


class MountRefused(ValueError):
    """The path cannot take (or does not hold) the mount; the message says why."""


def normalised(path: str) -> str:
    """``path`` made absolute, without ``.``, ``..`` or doubled slashes (as text: nothing
    resolved)."""
    return "/" + posixpath.normpath(path).lstrip("/")


def forbidden(path: str) -> bool:
    """Whether ``path`` (normalised) is in :data:`FORBIDDEN`."""
    return any(path == top or path.startswith(top + "/") for top in FORBIDDEN)


def check_target(path: str) -> str:
    """``path`` normalised, if a mount may go there: absolute, not ``/``, not in
    :data:`FORBIDDEN`."""
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise MountRefused(f"{path!r} is not an absolute path")
    normal = normalised(path)
    if normal == "/":
        raise MountRefused("an image cannot be mounted at /")
    if forbidden(normal):
        raise MountRefused(f"an image cannot be mounted at {normal}: it belongs to the "
                           "kernel")
    return normal


def clone(path: str) -> int:
    """A detached copy of the mount at ``path`` (the caller closes it)."""
    fd = linux._libc.syscall(linux.SYS_OPEN_TREE, -100, os.fsencode(path),
                             linux.OPEN_TREE_CLONE | os.O_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"open_tree {path}: {os.strerror(err)}")
    return int(fd)


def in_namespace(mntns_fd: int, work: Callable[[], T]) -> T:
    """Run ``work`` on a new thread that joined the mount namespace ``mntns_fd`` (blocking;
    call it from a worker thread)."""
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            linux.unshare(CLONE_FS)
            linux.setns(mntns_fd, linux.CLONE_NEWNS)
            result.append(work())
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)

    thread = threading.Thread(target=run, name="hutch-mountns", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def namespace_root(mntns_fd: int) -> int:
    """A descriptor (``O_PATH``) of the root of the mount namespace ``mntns_fd``: ``/`` as
    the sandbox's commands see it (the zygote joins the namespace, so its root).

    Why not ``/proc/<init>/root``: that is the root of the sandbox's *init*, which may
    ``chroot`` (it holds ``CAP_SYS_CHROOT``; its code is the sandbox's).  An init that
    did ``chroot("/proc")`` made ``/1`` name the sandbox's ``/proc/1``, which passed
    :func:`check_target`: an image was mounted over ``/proc/1``, and
    ``snapshot_directory("/")`` copied ``/proc`` (tests/security/test_issue19_red_team.py).
    No process of the sandbox can change its namespace's root (it may not mount)."""
    return in_namespace(mntns_fd, lambda: os.open(
        "/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))


def seen_path(root: int, fd: int, proc: int | None = None) -> str:
    """Where ``fd`` is, as the root ``root`` sees it (``proc``: a descriptor of the
    engine's ``/proc``, for a thread whose root is elsewhere)."""
    top = os.readlink(f"self/fd/{root}", dir_fd=proc) if proc is not None \
        else os.readlink(f"/proc/self/fd/{root}")
    where = os.readlink(f"self/fd/{fd}", dir_fd=proc) if proc is not None \
        else os.readlink(f"/proc/self/fd/{fd}")
    if top == "/":
        return where
    if where == top:
        return "/"
    if not where.startswith(top + "/"):
        raise MountRefused("the path resolves outside the sandbox")
    return where[len(top):]


def _mount_id_at(proc: int, fd: int) -> int:
    with open(os.open(f"self/fdinfo/{fd}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc),
              encoding="ascii") as f:
        for line in f:
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    raise OSError(f"no mnt_id for descriptor {fd}")


def _open_target(root_fd: int, path: str) -> int:
    """``path`` resolved in the sandbox's root; :class:`MountRefused` where it names no
    directory (the sandbox may remove or rename it at any time: measured, a renamed parent
    made an unmount an internal engine error, tests/security/test_issue19_red_team.py)."""
    try:
        return inroot.openat2(root_fd, path.lstrip("/"), os.O_PATH | os.O_DIRECTORY,
                              _RESOLVE)
    except OSError as exc:
        raise MountRefused(f"{path} is no directory in the sandbox (any more): "
                           f"{exc.strerror}") from exc


def attach(mntns_fd: int, root_fd: int, path: str, mount_fd: int, *,
           refuse: Collection[str] = ()) -> tuple[str, int]:
    """Move the detached mount ``mount_fd`` onto ``path`` (an existing directory),
    resolved inside the sandbox root ``root_fd``, unless it resolves to one of
    ``refuse``; returns the path it resolved to and the new mount's id."""
    proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def work() -> tuple[str, int]:
        target = _open_target(root_fd, path)
        try:
            seen = check_target(seen_path(root_fd, target, proc))
            if seen in refuse:
                raise MountRefused(f"an image is already mounted at {seen}")
            linux._check(linux._libc.syscall(
                linux.SYS_MOVE_MOUNT, mount_fd, b"", target, b"",
                linux.MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH),
                f"move_mount {path}")
        finally:
            os.close(target)
        # the attached mount is the one ``mount_fd`` holds: its id needs no second lookup
        # of the path, which the sandbox may have renamed meanwhile
        return seen, _mount_id_at(proc, mount_fd)

    try:
        return in_namespace(mntns_fd, work)
    finally:
        os.close(proc)


def detach(mntns_fd: int, root_fd: int, path: str, expected: int) -> None:
    """Unmount the mount with id ``expected`` found at ``path`` in the sandbox; refused
    (:class:`MountRefused`) when another mount, or none, is there."""
    proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def work() -> None:
        target = _open_target(root_fd, path)
        try:
            if _mount_id_at(proc, target) != expected:
                raise MountRefused(f"no image is mounted at {path}")
            os.fchdir(target)
            linux.umount(".", linux.MNT_DETACH)
        finally:
            os.close(target)

    try:
        in_namespace(mntns_fd, work)
    finally:
        os.close(proc)
