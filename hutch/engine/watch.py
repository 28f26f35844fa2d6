"""Watching a sandbox's files with inotify, without leaving the sandbox's root.

The directories are opened through the confined resolver (:mod:`hutch.engine.sandboxfs`)
and watched through their ``/proc/self/fd`` links, so a watch lands on the inode the kernel
resolved inside the sandbox.  With ``recursive`` every subdirectory is watched, including
those created while the watch runs.  Events come out as ``(type, path)`` with the path as
the sandbox sees it.
"""

from __future__ import annotations

import os
import struct

import trio

from hutch.engine import linux
from hutch.engine.sandboxfs import SandboxFS

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


def event_type(mask: int) -> str:
    if mask & (IN_CREATE | IN_MOVED_TO):
        return "create"
    if mask & (IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF):
        return "remove"
    if mask & (IN_MODIFY | IN_CLOSE_WRITE):
        return "modify"
    return "access"


class Watch:
    def __init__(self, fs: SandboxFS, path: str, recursive: bool) -> None:
        self.fs = fs
        self.recursive = recursive
        self.fd = linux.inotify_init()
        self.paths: dict[int, str] = {}
        try:
            self._add(fs.path(path).rstrip("/") or "/")
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        """Stop watching; closes the sandbox files handle too (the watch owns it)."""
        os.close(self.fd)
        self.fs.close()

    def _add(self, path: str) -> None:
        target = self.fs.open(path, os.O_PATH)
        try:
            wd = linux.inotify_add(self.fd, f"/proc/self/fd/{target}", WATCH_MASK)
            self.paths[wd] = path
            if self.recursive and os.path.isdir(f"/proc/self/fd/{target}"):
                for entry in self.fs.list(path):
                    if entry.type == "directory":
                        self._add(f"{path.rstrip('/')}/{entry.name}")
        finally:
            os.close(target)

    async def next_events(self) -> list[tuple[str, str]]:
        """The next batch of events (waits for at least one); safe to cancel."""
        while True:
            await trio.lowlevel.wait_readable(self.fd)
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
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
                for entry in self.fs.list(here):
                    child = f"{here.rstrip('/')}/{entry.name}"
                    found.append(("create", child))
                    if entry.type == "directory":
                        pending.append(child)
            return found
        except Exception:
            return []
