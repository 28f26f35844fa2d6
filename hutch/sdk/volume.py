"""``hutch.Volume``: persistent storage shared by sandboxes, with Modal's Volume API.

A volume lives in the engine's data directory; it survives sandboxes and engine restarts,
and every sandbox mounting it sees the others' writes at once, so ``commit()`` and
``reload()`` have nothing to wait for (they check the volume exists).  Its files can be
read and written without a sandbox (``read_file``, ``batch_upload``, ...), streamed.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypedDict

import anyio

from hutch.api import urls
from hutch.exception import InvalidError, NotFoundError
from hutch.sdk import transport
from hutch.sdk.files import CHUNK, FileType, listing
from hutch.sdk.localobject import LocalObject
from hutch.sdk.options import (
    check_object_name,
    check_text,
    listing_bounds,
    reject_unsupported,
    shown,
)
from hutch.sdk.syncbridge import (
    run_sync,
    synchronize,
    synchronize_generator,
    synchronize_static,
)
from hutch.sdk.transport import client


def _sub_path(sub_path: object) -> str | None:
    """A ``sub_path`` as the engine takes it: a directory of the volume (no ``..``, which
    could leave it) without NUL bytes; None for the whole volume."""
    if sub_path is None:
        return None
    if not isinstance(sub_path, str) or ".." in sub_path.split("/"):
        raise InvalidError("sub_path must be a path inside the volume")
    return check_text(sub_path, f"sub_path {shown(sub_path)}")


def _path(path: object, what: str = "path") -> str:
    """A path in the volume as the engine takes it: a non-empty string without NUL bytes
    (refused here, by name, rather than by the engine or by httpx)."""
    if not isinstance(path, str) or not path:
        raise InvalidError(f"{what} must be a non-empty string, got {shown(path)}")
    return check_text(path, f"{what} {shown(path)}")


class VolumeCreateOptions(TypedDict, total=False):
    """Options of a volume's creation (Modal's): none is used by hutch."""

    experimental_options: dict[str, Any]


@dataclass(frozen=True)
class VolumeMountInfo:
    """A volume a sandbox mounts, as Modal names it."""

    name: str | None
    volume_id: str | None
    read_only: bool
    sub_path: str | None


class FileEntryType(enum.IntEnum):
    """What a volume entry is (Modal's ``modal.volume.FileEntryType``)."""

    UNSPECIFIED = 0
    FILE = 1
    DIRECTORY = 2
    SYMLINK = 3
    FIFO = 4
    SOCKET = 5


_ENTRY_TYPES = {FileType.FILE: FileEntryType.FILE, FileType.DIRECTORY: FileEntryType.DIRECTORY,
                FileType.SYMLINK: FileEntryType.SYMLINK}


@dataclass(frozen=True)
class VolumeEntry:
    """A path in a volume, as ``listdir`` reports it (Modal's ``FileEntry``)."""

    path: str
    type: FileEntryType
    size: int
    mtime: float


class Volume(LocalObject):
    """A named volume; mount it with ``Sandbox.create(volumes={"/data": vol})``."""

    #: ``Volume.objects.create/list/delete``
    objects: VolumeManager

    def __init__(self, name: str, volume_id: str | None = None, *, read_only: bool = False,
                 sub_path: str | None = None, create_if_missing: bool = False) -> None:
        self.name = name
        #: the engine's id, once the volume was looked up (None before: Modal's objects
        #: are "hydrated" at their first use too)
        self.object_id = volume_id
        self._read_only = read_only
        self._sub_path = sub_path
        self._create_if_missing = create_if_missing

    async def _resolve(self) -> str:
        """The volume's id: looked up (and made, for ``create_if_missing``) at the first
        use, as Modal's lazy ``from_name`` objects are."""
        if self.object_id is None:
            doc = await transport.client().request("POST", urls.VOLUMES_LOOKUP, json_body={
                "name": self.name, "create_if_missing": self._create_if_missing})
            self.object_id = doc["volume_id"]
        return self.object_id

    @property
    def _base(self) -> str:
        return urls.VOLUME.format(name=self.name)

    @synchronize_static
    async def from_name(name: str, *, environment_name: str | None = None,
                        create_if_missing: bool = False, version: Any = None,
                        create_options: Any = None, client: Any = None) -> Volume:
        """The volume called ``name``, looked up where it is first used, as Modal's is: a
        module may name it before it exists.  There a missing one raises
        :class:`NotFoundError`, unless ``create_if_missing`` (then it is made);
        ``hydrate()`` looks it up now."""
        reject_unsupported({"environment_name": environment_name, "version": version,
                            "create_options": create_options, "client": client},
                           "Volume.from_name")
        check_object_name(name, "Volume")
        return Volume(name, create_if_missing=bool(create_if_missing))

    @staticmethod
    @contextlib.contextmanager
    def ephemeral(client: Any = None, environment_name: str | None = None,
                  version: Any = None, create_options: Any = None) -> Iterator[Volume]:
        """A new volume, deleted when the block exits."""
        reject_unsupported({"environment_name": environment_name, "version": version,
                            "create_options": create_options, "client": client},
                           "Volume.ephemeral")
        volume = Volume.from_name(f"ephemeral-{uuid.uuid4().hex[:16]}", create_if_missing=True)
        volume.hydrate()  # made now: deleted below whatever the block does
        try:
            yield volume
        finally:
            Volume.delete(volume.name)

    @synchronize
    async def hydrate(self, client: Any = None) -> Volume:
        """Look the volume up now (made, if it was named with ``create_if_missing``):
        :class:`NotFoundError` if it does not exist; returns the volume itself."""
        reject_unsupported({"client": client}, "Volume.hydrate")
        await self._resolve()
        return self

    @synchronize_static
    async def delete(name: str) -> None:
        """Delete a volume and its files (refused while a running sandbox mounts it)."""
        check_object_name(name, "Volume")  # it becomes part of the request's path
        await client().request("DELETE", urls.VOLUME.format(name=name))

    @synchronize_static
    async def from_id(volume_id: str, client: Any = None) -> Volume:
        """The volume with this id (``vo-...``)."""
        reject_unsupported({"client": client}, "Volume.from_id")
        if not isinstance(volume_id, str):
            raise InvalidError("volume_id must be a string")
        found = await transport.client().request("GET", urls.VOLUMES)
        for doc in found["volumes"]:
            if doc["volume_id"] == volume_id:
                return Volume(doc["name"], doc["volume_id"])
        raise NotFoundError(f"Volume {volume_id!r} not found")

    @synchronize_static
    async def rename(old_name: str, new_name: str, *, client: Any = None,
                     environment_name: str | None = None) -> None:
        """Give a volume a new name (refused while a running sandbox mounts it;
        :class:`AlreadyExistsError` if the new name is taken)."""
        reject_unsupported({"client": client, "environment_name": environment_name},
                           "Volume.rename")
        check_object_name(old_name, "Volume")
        check_object_name(new_name, "Volume")
        await transport.client().request("POST", urls.VOLUME_RENAME.format(name=old_name),
                                         json_body={"new_name": new_name})

    @synchronize
    async def info(self) -> VolumeInfo:
        """Its name and when it was made (Modal's ``VolumeInfo``)."""
        await self._resolve()
        found = await client().request("GET", urls.VOLUMES)
        for doc in found["volumes"]:
            if doc["name"] == self.name:
                created = datetime.datetime.fromtimestamp(doc["created_at"], datetime.UTC)
                return VolumeInfo(name=self.name, created_at=created, created_by=None)
        raise NotFoundError(f"Volume {self.name!r} not found")

    def read_only(self) -> Volume:
        """This volume, mounted read-only (Modal's ``Volume.read_only()``)."""
        return self.with_mount_options(read_only=True, sub_path=self._sub_path)

    def with_mount_options(self, *, read_only: bool = False,
                           sub_path: str | None = None) -> Volume:
        """This volume mounted read-only and/or only its directory ``sub_path``."""
        return Volume(self.name, self.object_id, read_only=bool(read_only),
                      sub_path=_sub_path(sub_path), create_if_missing=self._create_if_missing)

    def mount(self) -> dict[str, Any]:
        """How a sandbox mounts it (what ``Sandbox.create`` sends), checked again: a
        ``Volume`` made by its constructor has not been."""
        return {"name": check_object_name(self.name, "Volume"), "read_only": self._read_only,
                "sub_path": _sub_path(self._sub_path)}

    @synchronize
    async def commit(self) -> None:
        """Nothing to do: writes are visible at once (checks that the volume exists)."""
        await self._resolve()
        await client().request("POST", urls.VOLUMES_LOOKUP, json_body={"name": self.name})

    @synchronize
    async def reload(self) -> None:
        """Nothing to do: other sandboxes' writes are visible at once."""
        await self.commit.aio()

    @synchronize
    async def listdir(self, path: str = "/", *, recursive: bool = False) -> list[VolumeEntry]:
        await self._resolve()
        doc = await client().request("GET", self._base + urls.FS_LIST,
                                     params={"path": _path(path), "recursive": recursive})
        return [VolumeEntry(e["path"], _ENTRY_TYPES.get(FileType(e["type"]),
                                                          FileEntryType.UNSPECIFIED),
                            e["size"], e["mtime"])
                for e in listing(doc)]

    @synchronize_generator
    async def iterdir(self, path: str = "/", *, recursive: bool = True
                      ) -> AsyncIterator[VolumeEntry]:
        """The entries under ``path`` (all the tree's, unless ``recursive=False``), one at a
        time (``iterdir.aio`` is an async iterator)."""
        for entry in await self.listdir.aio(path, recursive=recursive):
            yield entry

    @synchronize_generator
    async def read_file(self, path: str) -> AsyncIterator[bytes]:
        """The file's contents, chunk by chunk (``read_file.aio`` is an async iterator)."""
        async for chunk in self._read(path):
            yield chunk

    async def _read(self, path: str) -> AsyncIterator[bytes]:
        await self._resolve()
        async for chunk in client().stream_bytes(self._base + urls.FS_FILE, {"path": _path(path)}):
            yield chunk

    @synchronize
    async def read_file_into_fileobj(self, path: str, fileobj: IO[bytes]) -> int:
        size = 0
        async for chunk in self._read(path):
            fileobj.write(chunk)
            size += len(chunk)
        return size

    @synchronize
    async def remove_file(self, path: str, recursive: bool = False) -> None:
        await self._resolve()
        await client().request("POST", self._base + urls.FS_REMOVE,
                               json_body={"path": _path(path), "recursive": bool(recursive)})

    @synchronize
    async def copy_files(self, src_paths: list[str], dst_path: str) -> None:
        if isinstance(src_paths, str):
            raise InvalidError("src_paths must be a list of paths")
        sources = [_path(p, "src_paths: the path") for p in src_paths]
        await self._resolve()
        await client().request("POST", self._base + urls.FS_COPY,
                               json_body={"src_paths": sources, "dst_path": _path(dst_path)})

    @property
    def batch_upload(self) -> _BatchFace:
        """``with vol.batch_upload(force=False) as batch:`` (or ``async with
        vol.batch_upload.aio():``) collects ``put_file``/``put_directory`` calls; they are
        uploaded when the block exits without an error (``FileExistsError`` for an
        existing file unless ``force``)."""
        return _BatchFace(self)

    def __repr__(self) -> str:
        return f"Volume({self.name!r})"


@dataclass(frozen=True)
class VolumeInfo:
    """What ``Volume.info()`` tells (Modal's ``modal.types.VolumeInfo``)."""

    name: str | None
    created_at: datetime.datetime
    created_by: str | None


class VolumeManager:
    """``Volume.objects``: create, list and delete volumes by name."""

    @synchronize
    async def create(self, name: str, *, version: Any = None, allow_existing: bool = False,
                     environment_name: str | None = None, client: Any = None,
                     create_options: Any = None) -> None:
        """A new volume; :class:`AlreadyExistsError` if the name is taken, unless
        ``allow_existing``."""
        reject_unsupported({"version": version, "environment_name": environment_name,
                            "client": client, "create_options": create_options},
                           "Volume.objects.create")
        check_object_name(name, "Volume")
        await transport.client().request("POST", urls.VOLUMES_LOOKUP, json_body={
            "name": name, "create_if_missing": True, "must_create": not allow_existing})

    @synchronize
    async def list(self, *, max_objects: int | None = None,
                   created_before: datetime.datetime | str | None = None,
                   environment_name: str = "", client: Any = None) -> list[Volume]:
        """The volumes, newest first."""
        reject_unsupported({"environment_name": environment_name or None, "client": client},
                           "Volume.objects.list")
        before = listing_bounds(max_objects, created_before)
        docs = (await transport.client().request("GET", urls.VOLUMES))["volumes"]
        docs = sorted((d for d in docs if before is None
                       or d["created_at"] < before),
                      key=lambda d: d["created_at"], reverse=True)
        found = [Volume(d["name"], d["volume_id"]) for d in docs]
        return found if max_objects is None else found[:max_objects]

    @synchronize
    async def delete(self, name: str, *, allow_missing: bool = False,
                     environment_name: str | None = None, client: Any = None) -> None:
        """Delete a volume and its files (refused while a running sandbox mounts it)."""
        reject_unsupported({"environment_name": environment_name, "client": client},
                           "Volume.objects.delete")
        try:
            await Volume.delete.aio(name)
        except NotFoundError:
            if not allow_missing:
                raise


class _BatchFace:
    """``vol.batch_upload(...)`` and ``vol.batch_upload.aio(...)``."""

    def __init__(self, volume: Volume) -> None:
        self.volume = volume

    def __call__(self, force: bool = False) -> VolumeUploadContextManager:
        return VolumeUploadContextManager(self.volume, force)

    aio = __call__


class VolumeUploadContextManager:
    """One batch: a context manager for ``with`` and for ``async with``."""

    def __init__(self, volume: Volume, force: bool) -> None:
        self._volume = volume
        self._force = force
        self._files: list[tuple[Path | IO[bytes], str, int]] = []

    def __enter__(self) -> VolumeUploadContextManager:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is None:
            run_sync(self.upload)

    async def __aenter__(self) -> VolumeUploadContextManager:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is None:
            await self.upload()

    def put_file(self, local_file: str | os.PathLike[str] | IO[bytes], remote_path: str,
                 mode: int | None = None) -> None:
        """A local file (a path, or a binary file object read from where it stands) for
        ``remote_path``; ``mode``: its permissions (else the local file's, or 0644)."""
        if mode is not None and (isinstance(mode, bool) or not isinstance(mode, int)
                                 or not 0 <= mode <= 0o7777):
            raise InvalidError(f"mode must be permission bits such as 0o644, got {mode!r}")
        remote = _path(remote_path, "remote_path")
        if not isinstance(local_file, str | os.PathLike):
            if not hasattr(local_file, "read"):
                raise InvalidError("put_file takes a path or a binary file object")
            self._files.append((local_file, remote, 0o644 if mode is None else mode))
            return
        local = Path(local_file)
        if not local.is_file():
            raise FileNotFoundError(f"no local file {str(local)!r}")
        self._files.append((local, remote, mode if mode is not None
                            else local.stat().st_mode & 0o777))

    def put_directory(self, local_path: str | os.PathLike[str], remote_path: str) -> None:
        local = Path(local_path)
        if not local.is_dir():
            raise NotADirectoryError(f"{str(local)!r} is not a local directory")
        _path(remote_path, "remote_path")
        for file in sorted(p for p in local.rglob("*") if p.is_file()):
            remote = f"{remote_path.rstrip('/')}/{file.relative_to(local).as_posix()}"
            self._files.append((file, _path(remote, "remote_path"),  # a name not UTF-8
                                file.stat().st_mode & 0o777))

    async def upload(self) -> None:
        await self._volume._resolve()
        engine = client()
        base = urls.VOLUME.format(name=self._volume.name)
        if not self._force:
            existing = {e.path.lstrip("/") for e in await self._volume.listdir.aio(
                "/", recursive=True) if e.type is FileEntryType.FILE}
            clashes = [r for _, r, _ in self._files if r.lstrip("/") in existing]
            if clashes:
                raise FileExistsError(f"already in the volume: {', '.join(clashes)} "
                                      "(use batch_upload(force=True))")
        for local, remote, mode in self._files:

            async def chunks(local: Path | IO[bytes] = local) -> AsyncIterator[bytes]:
                if not isinstance(local, Path):
                    while data := await anyio.to_thread.run_sync(local.read, CHUNK):
                        yield data
                    return
                async with await anyio.open_file(local, "rb") as f:
                    while data := await f.read(CHUNK):
                        yield data

            await engine.request("PUT", base + urls.FS_FILE, content=chunks(),
                                 params={"path": remote, "mode": mode})


Volume.objects = VolumeManager()
