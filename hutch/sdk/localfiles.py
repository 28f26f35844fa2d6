"""Local files for image builds: deterministic tars, ignore rules, upload by digest.

A tar of the same files always has the same bytes (sorted names, owner root, mtime 0, the
files' own permission bits), so its sha256 is a content hash: it is the build cache's key
for the step, and the engine is sent a context only when it does not have that digest yet.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path

from hutch.api import urls
from hutch.exception import InvalidError
from hutch.sdk.transport import client

IgnoreSpec = Sequence[str] | Callable[[Path], bool]


def _ignored(rel: Path, ignore: IgnoreSpec) -> bool:
    if callable(ignore):
        return bool(ignore(rel))
    text = rel.as_posix()
    return any(fnmatch.fnmatch(text, pattern) or fnmatch.fnmatch(rel.name, pattern)
               for pattern in ignore)


def _info(name: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = st.st_mode & 0o7777
    info.uid = info.gid = 0
    info.mtime = 0
    return info


def tar_file(path: Path, name: str) -> bytes:
    """A tar holding one file under ``name``."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar, \
            open(path, "rb") as f:
        st = os.fstat(f.fileno())
        info = _info(name, st)
        info.size = st.st_size
        tar.addfile(info, f)
    return out.getvalue()


def check_ignore(ignore: object) -> None:
    if not callable(ignore) and (isinstance(ignore, str) or not all(
            isinstance(p, str) for p in ignore)):  # type: ignore[attr-defined]
        raise InvalidError("ignore must be a list of glob patterns or a predicate")


def ignored_paths(root: Path, ignore: IgnoreSpec) -> list[str]:
    """The paths under ``root`` (relative) that ``ignore`` leaves out: a directory's, not
    also what is inside it."""
    out: list[str] = []
    prune = can_prune(ignore)
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        for name in sorted(filenames):
            if _ignored(rel_dir / name, ignore):
                out.append((rel_dir / name).as_posix())
        kept = []
        for name in sorted(dirnames):
            if prune and _ignored(rel_dir / name, ignore):
                out.append((rel_dir / name).as_posix())
            else:
                kept.append(name)
        dirnames[:] = kept
    return sorted(out)


def can_prune(ignore: IgnoreSpec) -> bool:
    """Whether a directory ``ignore`` matches can be left out whole: not where a later
    rule (``!keep``, ``~FilePatternMatcher``) may bring back something inside it."""
    check = getattr(ignore, "can_prune_directories", None)
    return True if check is None else bool(check())


def tar_directory(root: Path, ignore: IgnoreSpec = ()) -> bytes:
    """A tar of ``root``'s contents (not ``root`` itself), minus what ``ignore`` matches.

    Symlinks are kept as links; other special files are refused.
    """
    if not callable(ignore) and (isinstance(ignore, str) or not all(
            isinstance(p, str) for p in ignore)):
        raise InvalidError("ignore must be a list of glob patterns or a predicate")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def unreadable(exc: OSError) -> None:
            raise InvalidError(f"add_local_dir: cannot read {exc.filename}: {exc.strerror}")

        prune = can_prune(ignore)
        for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
            base = Path(dirpath)
            rel_dir = base.relative_to(root)
            dirnames[:] = sorted(d for d in dirnames
                                 if not (prune and _ignored(rel_dir / d, ignore)))
            for name in sorted([*dirnames, *filenames]):
                path, rel = base / name, rel_dir / name
                if _ignored(rel, ignore) and (name in filenames or prune):
                    continue  # (a matched directory that is kept holds kept files)
                st = os.lstat(path)
                info = _info(rel.as_posix(), st)
                if os.path.islink(path):
                    info.type = tarfile.SYMTYPE
                    info.linkname = os.readlink(path)
                    tar.addfile(info)
                elif path.is_dir():
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif path.is_file():
                    info.size = st.st_size
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    raise InvalidError(f"add_local_dir: {path} is not a file, directory or "
                                       "symlink")
    return out.getvalue()


async def upload_context(make_tar: Callable[[], bytes]) -> str:
    """Upload a build context unless the engine has it; returns its digest."""
    data = make_tar()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    engine = client()
    present = await engine.request("GET", urls.IMAGE_CONTEXT.format(digest=digest))
    if not present["present"]:
        await engine.request("PUT", urls.IMAGE_CONTEXT.format(digest=digest), content=data)
    return digest
