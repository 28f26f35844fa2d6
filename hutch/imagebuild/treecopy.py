"""Reading files out of an image's root for ``COPY --from``, and owners by name, safely.

The source image is untrusted: its symlinks may point anywhere, its ``/etc/passwd`` may be
a link to the host's.  Every path is resolved by the kernel inside the image's root
(``openat2`` with ``RESOLVE_IN_ROOT``, :mod:`hutch.imagebuild.inroot`), as it would be in a
container of that image, and the tree below a source is walked by descriptor without
following any link: links are copied as links, as ``COPY`` copies them.  Sockets, FIFOs
and devices are left out, hard links become copies.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import tarfile
from pathlib import PurePosixPath
from typing import IO

from hutch.imagebuild import inroot
from hutch.imagebuild.inroot import UnsafeEntry

#: openat2: resolve inside the root, never through /proc's magic links, never onto another
#: mount (the source's root is one file system)
_RESOLVE = inroot.RESOLVE_IN_ROOT | inroot.RESOLVE_NO_MAGICLINKS | inroot.RESOLVE_NO_XDEV
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class CopyFailed(RuntimeError):
    pass


def _open_in(root_fd: int, path: str, flags: int) -> int:
    return inroot.openat2(root_fd, path.lstrip("/") or ".", flags | os.O_CLOEXEC, _RESOLVE)


def expand_sources(root_fd: int, sources: list[str]) -> list[str]:
    """Sources with ``*``, ``?`` or ``[`` in their last part replaced by what matches."""
    out: list[str] = []
    for source in sources:
        path = PurePosixPath(source)
        if not any(c in path.name for c in "*?["):
            out.append(source)
            continue
        try:
            fd = _open_in(root_fd, str(path.parent), _DIR)
        except OSError as exc:
            raise CopyFailed(f"{path.parent}: {exc.strerror}") from exc
        try:
            names = sorted(n for n in os.listdir(fd) if fnmatch.fnmatchcase(n, path.name))
        finally:
            os.close(fd)
        if not names:
            raise CopyFailed(f"nothing matches {source}")
        out.extend(str(path.parent / n) for n in names)
    return out


def _info(name: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = int(st.st_mtime)
    return info


#: How deep ``COPY --from`` walks a directory tree.
MAX_DEPTH = 256


def _add_tree(tar: tarfile.TarFile, fd: int, prefix: str, space: inroot.Space,
              depth: int = 0) -> None:
    """Everything in the directory ``fd`` under ``prefix`` in ``tar``."""
    if depth > MAX_DEPTH:
        raise CopyFailed(f"{prefix}: more than {MAX_DEPTH} directories deep")
    for name in sorted(os.listdir(fd)):
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        member = f"{prefix}/{name}" if prefix else name
        _add_entry(tar, fd, name, member, st, space, depth)


def _add_entry(tar: tarfile.TarFile, parent: int, name: str, member: str,
               st: os.stat_result, space: inroot.Space, depth: int) -> None:
    info = _info(member, st)
    if stat.S_ISLNK(st.st_mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(name, dir_fd=parent)
        tar.addfile(info)
    elif stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        sub = os.open(name, _DIR | os.O_NOFOLLOW, dir_fd=parent)
        try:
            _add_tree(tar, sub, member, space, depth + 1)
        finally:
            os.close(sub)
    elif stat.S_ISREG(st.st_mode):
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     dir_fd=parent)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            info.size = st.st_size
            space.claim(st.st_size)  # a sparse file is its size here: checked first
            tar.addfile(info, f)


def tar_sources(root: str, sources: list[str], out: IO[bytes]) -> bool:
    """A tar, written to ``out``, of ``sources`` resolved inside ``root``: a directory's
    contents at the top, a file under its own name; whether that is one regular file
    (which ``COPY`` may then write at a file path).  Each file's size is checked against
    the free space where ``out`` is before it is written
    (:class:`hutch.imagebuild.inroot.Space`)."""
    root_fd = inroot.open_root(root)
    space = inroot.Space(out.fileno())
    files = 0
    try:
        expanded = expand_sources(root_fd, sources)
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for source in expanded:
                try:  # O_NONBLOCK: a FIFO in the image must not hold the build
                    fd = _open_in(root_fd, source, os.O_RDONLY | os.O_NONBLOCK)
                except OSError as exc:
                    raise CopyFailed(f"{source}: {exc.strerror}") from exc
                try:
                    st = os.fstat(fd)
                    if stat.S_ISDIR(st.st_mode):
                        _add_tree(tar, fd, "", space)
                    elif stat.S_ISREG(st.st_mode):
                        info = _info(PurePosixPath(source).name or "file", st)
                        info.size = st.st_size
                        space.claim(st.st_size)
                        with os.fdopen(os.dup(fd), "rb") as f:
                            tar.addfile(info, f)
                        files += 1
                    else:
                        raise CopyFailed(f"{source} is not a file or directory")
                finally:
                    os.close(fd)
        return files == 1 and len(expanded) == 1
    finally:
        os.close(root_fd)


def is_dir_in(root: str, path: str) -> bool:
    """Whether ``path``, resolved inside ``root``, is a directory."""
    root_fd = inroot.open_root(root)
    try:
        fd = _open_in(root_fd, path, _DIR)
    except OSError:
        return False
    finally:
        os.close(root_fd)
    os.close(fd)
    return True


# owners ---------------------------------------------------------------------------------------
def _table(root: str, path: str) -> list[list[str]]:
    """The lines of the image's ``path``, split at ``:``; nothing unless it is a regular
    file (opened without blocking: a FIFO there must not hold the engine)."""
    root_fd = inroot.open_root(root)
    try:
        fd = _open_in(root_fd, path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return []
    finally:
        os.close(root_fd)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafeEntry(f"the image's {path} is not a regular file")
        data = f.read(4 << 20)
    return [line.split(":") for line in data.decode(errors="replace").splitlines()]


def lookup_owner(root: str, spec: str) -> tuple[int, int]:
    """``user[:group]`` (names or numbers) as the image's /etc/passwd and /etc/group have
    them; a user alone takes its primary group, as Docker's ``--chown`` and ``USER`` do."""
    user, _, group = spec.partition(":")
    if user.isdigit():
        uid, gid = int(user), int(user)
        for row in _table(root, "/etc/passwd"):
            if len(row) > 3 and row[2] == user and row[3].isdigit():
                gid = int(row[3])
                break
    else:
        for row in _table(root, "/etc/passwd"):
            if len(row) > 3 and row[0] == user and row[2].isdigit() and row[3].isdigit():
                uid, gid = int(row[2]), int(row[3])
                break
        else:
            raise UnsafeEntry(f"no user {user!r} in the image's /etc/passwd")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            for row in _table(root, "/etc/group"):
                if len(row) > 2 and row[0] == group and row[2].isdigit():
                    gid = int(row[2])
                    break
            else:
                raise UnsafeEntry(f"no group {group!r} in the image's /etc/group")
    if uid > 65535 or gid > 65535:
        raise UnsafeEntry(f"{spec}: ids above 65535 are not mapped in sandboxes")
    return uid, gid
