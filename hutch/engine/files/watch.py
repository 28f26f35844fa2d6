"""Watching a sandbox's files with inotify, without leaving the sandbox's root.

The directories are opened through the confined resolver (:mod:`hutch.engine.files.sandboxfs`)
and watched through their ``/proc/self/fd`` links, so a watch lands on the inode the kernel
resolved inside the sandbox.  With ``recursive`` every subdirectory is watched, including
those created while the watch runs.  Events come out as ``(type, path)`` with the path as
the sandbox sees it.

Setting up a recursive watch lists every directory of the tree, and each directory costs
one of the user's inotify watches (shared with the user's desktop and every other
sandbox): a watch takes at most :data:`MAX_WATCH_DIRS` directories (a tree of 5,000 was
watched whole, on the event loop).  Setting up and reading events (which may list new
directories) are worker-thread steps with a deadline, run by the file routes.
"""

from __future__ import annotations

import errno
import os
import struct

from hutch.engine.files.fileops import check_deadline
from hutch.engine.files.sandboxfs import FileError, SandboxFS
from hutch.engine.kernel import linux

IN_ACCESS = 0x001
IN_MODIFY = 0x002
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_ISDIR = 0x40000000
IN_IGNORED = 0x8000
WATCH_MASK = (IN_ACCESS | IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO
              | IN_CREATE | IN_DELETE | IN_DELETE_SELF)
_EVENT = struct.Struct("iIII")
#: Directories one watch may watch (a recursive one: the tree's, new ones included).
MAX_WATCH_DIRS = 4096


def event_type(mask: int) -> str:
    if mask & (IN_CREATE | IN_MOVED_TO):
        return "create"
    if mask & (IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF):
        return "remove"
    if mask & (IN_MODIFY | IN_CLOSE_WRITE):
        return "modify"
    return "access"


class Watch:
    def __init__(self, fs: SandboxFS, path: str, recursive: bool,
                 deadline: float = float("inf")) -> None:
        self.fs = fs.dup()  # its own: the caller's handle may be closed before the watch
        self.recursive = recursive
        self.deadline = deadline
        try:
            self.fd = linux.inotify_init()
        except BaseException:
            self.fs.close()
            raise
        self.paths: dict[int, str] = {}
        try:
            self._add(fs.path(path).rstrip("/") or "/")
        except BaseException:
            self.close()
            raise

    @classmethod
    def start(cls, fs: SandboxFS, path: str, recursive: bool, deadline: float) -> Watch:
        """A watch of ``path`` (a worker thread's work: it may list a whole tree), through
        a duplicate of ``fs`` that it closes.  inotify's refusals (a directory in /proc,
        no watches left) are typed file errors."""
        try:
            return cls(fs, path, recursive, deadline)
        except OSError as exc:
            reason = f"cannot watch: {os.strerror(exc.errno or 0)}"
            raise FileError(OSError(exc.errno, reason), path) from exc

    def close(self) -> None:
        """Stop watching; closes the watch's own root descriptor too."""
        os.close(self.fd)
        self.fs.close()

    def _add(self, path: str) -> None:
        pending = [path]
        while pending:
            here = pending.pop()
            if len(self.paths) >= MAX_WATCH_DIRS:
                raise FileError(OSError(errno.ENOSPC, f"more than {MAX_WATCH_DIRS} "
                                        "directories to watch; watch a smaller tree"), path)
            check_deadline(self.deadline, f"watching {path!r}")
            target = self.fs.open(here, os.O_PATH)
            try:
                wd = linux.inotify_add(self.fd, f"/proc/self/fd/{target}", WATCH_MASK)
                self.paths[wd] = here
                if self.recursive and os.path.isdir(f"/proc/self/fd/{target}"):
                    pending += [f"{here.rstrip('/')}/{name}"
                                for name in self._subdirectories(here)]
            finally:
                os.close(target)

    def _subdirectories(self, path: str) -> list[str]:
        fd = self.fs.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with os.scandir(fd) as it:
                return [e.name for e in it if e.is_dir(follow_symlinks=False)]
        finally:
            os.close(fd)

    def read_events(self, deadline: float) -> list[tuple[str, str]]:
        """The events ready now (none if there are none); a worker thread's work, since
        new directories of a recursive watch are listed and watched."""
        self.deadline = deadline
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        return self._parse(data)

    def _parse(self, data: bytes) -> list[tuple[str, str]]:
        events = []
        offset = 0
        while offset < len(data):
            wd, mask, _, size = _EVENT.unpack_from(data, offset)
            raw = data[offset + _EVENT.size: offset + _EVENT.size + size]
            offset += _EVENT.size + size
            if mask & IN_IGNORED or wd not in self.paths:
                continue
            if mask & IN_ACCESS and mask & IN_ISDIR:
                continue  # a directory listing (ours, when watching new directories)
            name = raw.rstrip(b"\0").decode(errors="replace")
            path = f"{self.paths[wd].rstrip('/')}/{name}" if name else self.paths[wd]
            events.append((event_type(mask), path))
            if self.recursive and mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
                events += self._watch_new_directory(path)
        return events

    def _watch_new_directory(self, path: str) -> list[tuple[str, str]]:
        """Watch a directory that just appeared, and report what was created in it before
        its watch existed."""
        try:
            self._add(path)
            found = []
            pending = [path]
            while pending:
                here = pending.pop()
                fd = self.fs.open(here, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    with os.scandir(fd) as it:
                        for item in it:
                            child = f"{here.rstrip('/')}/{item.name}"
                            found.append(("create", child))
                            if item.is_dir(follow_symlinks=False):
                                pending.append(child)
                            if len(found) % 256 == 0:
                                check_deadline(self.deadline, f"watching {path!r}")
                finally:
                    os.close(fd)
            return found
        except Exception:
            return []  # gone meanwhile, past the watch's size or deadline: not reported
