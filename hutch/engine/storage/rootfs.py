"""Per-sandbox root filesystems: overlayfs over the image's shared, read-only layers.

Each sandbox gets only an upper and a work directory of its own; the image's unpacked
layer directories are the lowerdirs, shared by every sandbox.  The engine mounts overlayfs
itself, as root of its user namespace (Linux >= 5.11 allows it there), with one mount(2)
call and no helper process.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from hutch.engine.errors import Invalid, NotFound
from hutch.engine.kernel import linux, trees
from hutch.engine.storage import layermirror
from hutch.engine.storage.store import Store
from hutch.imagebuild import inroot

log = logging.getLogger("hutch.rootfs")

MIB = 1024 * 1024
#: The most the entrypoint's stdout and stderr together hold while it runs: they are files
#: on a tmpfs of this size (or, with ``ephemeral_disk``, inside that tmpfs, counted in it),
#: because the sandbox can write them directly (``/proc/1/fd/1``).  As plain files on the
#: host's disk a red team filled 3 GiB of it with ``fallocate`` in seconds.  Also the most
#: kept on the host once the sandbox ended.  Its pages are charged to the writer's memory
#: cgroup, and cost nothing until written.
LOG_CAP_MIB = 64
#: Seconds the (capped) logs and the directory of an ended sandbox are kept before the
#: engine removes them (``HUTCH_LOG_RETENTION`` overrides it); checked at engine start and
#: every ``SWEEP_INTERVAL`` seconds.
LOG_RETENTION = 3600.0
SWEEP_INTERVAL = 300.0
LOG_FILES = ("stdout.log", "stderr.log")


@dataclass(frozen=True)
class SandboxDirs:
    """The directory layout of one sandbox (also its OCI bundle)."""

    root: Path

    @property
    def upper(self) -> Path:
        return self.root / "upper"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def scratch(self) -> Path:
        """The size-limited tmpfs holding upper and work (sandboxes with a disk limit)."""
        return self.root / "scratch"

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    @property
    def lower(self) -> Path:
        """The image's layers mounted under the sandbox's own ids (when it has them:
        :mod:`hutch.engine.storage.layermirror`)."""
        return self.root / "lower"

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def execs(self) -> Path:
        return self.root / "execs"

    @property
    def logs(self) -> Path:
        """The entrypoint's log files: a tmpfs of ``LOG_CAP_MIB`` (or a link into
        ``scratch``) while the sandbox runs, a plain directory of at most that much after."""
        return self.root / "logs"

    @property
    def stdout(self) -> Path:
        return self.logs / "stdout.log"

    @property
    def stderr(self) -> Path:
        return self.logs / "stderr.log"

    @property
    def stdin_fifo(self) -> Path:
        """The entrypoint's stdin; removed once the client sent EOF."""
        return self.root / "stdin"

    @property
    def pid_file(self) -> Path:
        return self.root / "init.pid"


def mount_rootfs(dirs: SandboxDirs, layers: list[Path], *, disk_mib: int | None = None,
                 owner: int | None = None, disk_slot: Path | None = None) -> None:
    """Create the sandbox's directories and mount its overlay root filesystem.

    With ``disk_mib``, the upper and work directories live on a tmpfs of that size (at
    ``scratch``; ``upper`` and ``work`` are links into it), so writes beyond it fail with
    ENOSPC.  A tmpfs is the one size-limited file system a rootless engine can mount; its
    pages are memory, charged to the sandbox's memory cgroup.
    ``owner``: the engine id of the sandbox's root (a sandbox with ids of its own), which
    owns the upper directory and so the root of its file system.  ``disk_slot``: a file
    system of a fixed size (:mod:`hutch.engine.storage.diskslots`) to hold the upper and work
    directories (links into it, as with ``disk_mib``).
    """
    for d in (dirs.merged, dirs.etc, dirs.execs):
        d.mkdir(parents=True, exist_ok=True)
    if disk_mib is None and disk_slot is not None:
        for name in ("upper", "work"):
            (disk_slot / name).mkdir()
            (dirs.root / name).symlink_to(disk_slot / name)
    elif disk_mib is None:
        dirs.upper.mkdir(exist_ok=True)
        dirs.work.mkdir(exist_ok=True)
    else:
        dirs.scratch.mkdir(exist_ok=True)
        try:
            linux.mount("tmpfs", str(dirs.scratch), "tmpfs", linux.MS_NODEV | linux.MS_NOSUID,
                        f"size={disk_mib}m,mode=0755")
        except OSError as exc:
            raise Invalid(f"ephemeral_disk: cannot mount a {disk_mib} MiB tmpfs: {exc}") \
                from exc
        for name in ("upper", "work"):
            (dirs.scratch / name).mkdir()
            (dirs.root / name).symlink_to(dirs.scratch / name)
    if owner is not None:
        os.chown(dirs.upper, owner, owner)
    # overlayfs lists lowerdirs top first; image layers are stored bottom first.  In a user
    # namespace overlayfs cannot set its trusted.* xattrs, so without ``userxattr`` removing
    # a directory that exists in a layer fails with EIO; use user.overlay.* everywhere.
    lower = ":".join(str(p) for p in reversed(layers))
    try:
        linux.mount("overlay", str(dirs.merged), "overlay", linux.MS_NODEV,
                    f"userxattr,lowerdir={lower},upperdir={dirs.upper.resolve()},"
                    f"workdir={dirs.work.resolve()}")
    except OSError as exc:
        if disk_mib is not None:
            raise Invalid(f"ephemeral_disk: overlayfs refuses a tmpfs upper directory here "
                          f"(Linux >= 6.6 needed for user xattrs on tmpfs): {exc}") from exc
        raise


def unmount_rootfs_keep_upper(dirs: SandboxDirs) -> None:
    """Unmount the overlay only (an image build keeps its upper directory as a layer)."""
    try:
        linux.umount(str(dirs.merged), linux.MNT_DETACH)
    except OSError as exc:
        # not mounted (EINVAL; EPERM where no capability lets the caller ask at all)
        if exc.errno not in (errno.EINVAL, errno.ENOENT) and \
                not (exc.errno == errno.EPERM and not os.path.ismount(dirs.merged)):
            raise


def mount_logs(dirs: SandboxDirs, *, in_scratch: bool) -> None:
    """Make the size-limited place of the entrypoint's logs (see ``LOG_CAP_MIB``).

    ``in_scratch``: the sandbox has an ``ephemeral_disk`` tmpfs, and its logs count in it
    (a link to a directory there, which the sandbox cannot reach by path: its root is the
    overlay, whose upper directory is a sibling).  Otherwise a tmpfs of its own.
    """
    if in_scratch:
        (dirs.scratch / "logs").mkdir()
        dirs.logs.symlink_to(dirs.scratch / "logs")
        return
    dirs.logs.mkdir()
    try:
        linux.mount("tmpfs", str(dirs.logs), "tmpfs",
                    linux.MS_NODEV | linux.MS_NOSUID | linux.MS_NOEXEC,
                    f"size={LOG_CAP_MIB}m,nr_inodes=16,mode=0700")
    except OSError:
        dirs.logs.rmdir()
        raise


def _kept_sizes(sizes: tuple[int, int], cap: int) -> tuple[int, int]:
    """How much of (stdout, stderr) to keep within ``cap``: each at least half of it, or
    all it has, and what one leaves goes to the other."""
    out, err = sizes
    keep_out = min(out, max(cap // 2, cap - err))
    return keep_out, min(err, cap - keep_out)


def _copy_head(src: Path, dest: Path, length: int) -> None:
    with open(src, "rb") as fin, open(dest, "xb") as fout:
        os.fchmod(fout.fileno(), 0o600)
        left = length
        while left > 0:
            data = fin.read(min(left, MIB))
            if not data:
                break
            fout.write(data)
            left -= len(data)


def keep_logs(dirs: SandboxDirs) -> None:
    """Copy the ended entrypoint's logs, at most ``LOG_CAP_MIB`` together (the first
    bytes, so offsets a reader already has stay valid), to a plain directory in their
    place and unmount their tmpfs.  Readers holding a file open keep reading the old one
    (a detached tmpfs stays readable through open files), which has the same start.
    Does nothing when they were already kept (or never made)."""
    live = dirs.logs
    linked = live.is_symlink()
    if not linked and not os.path.ismount(live):
        return
    kept = dirs.root / "logs.kept"
    shutil.rmtree(kept, ignore_errors=True)
    kept.mkdir(mode=0o700)
    if live.exists():
        sizes = tuple(p.stat().st_size if p.exists() else -1
                      for p in (live / n for n in LOG_FILES))
        keep = _kept_sizes((max(sizes[0], 0), max(sizes[1], 0)), LOG_CAP_MIB * MIB)
        for name, size, length in zip(LOG_FILES, sizes, keep, strict=True):
            if size >= 0:
                _copy_head(live / name, kept / name, length)
    if linked:
        live.unlink()
    else:
        linux.umount(str(live), linux.MNT_DETACH)
        live.rmdir()
    kept.rename(live)


def sweep_ended(sandboxes_dir: Path, store: Store, *, now: float | None = None,
                retention: float = LOG_RETENTION) -> list[str]:
    """Remove the directories (logs included) of sandboxes that ended more than
    ``retention`` seconds ago, and of unrecorded ones that old (remains of a create that
    never got its record); returns their ids.  A directory with something still mounted
    in it is left alone (its cleanup has not run)."""
    now = time.time() if now is None else now
    removed = []
    for path in sandboxes_dir.iterdir():
        try:
            row = store.sandbox(path.name)
            ended = row.finished_at if row.state == "exited" else None
        except NotFound:
            try:
                ended = path.lstat().st_mtime
            except FileNotFoundError:
                continue
        if ended is None or now - ended <= retention:
            continue
        dirs = SandboxDirs(path)
        if any(os.path.ismount(p) for p in (dirs.merged, dirs.scratch, dirs.logs,
                                            dirs.lower / "0")):
            log.warning("not removing %s: something is still mounted in it", path)
            continue
        trees.remove_tree(path)
        removed.append(path.name)
    return removed


def unmount_rootfs(dirs: SandboxDirs) -> None:
    """Unmount the overlay and remove everything but the entrypoint's logs (kept, capped,
    for ``LOG_RETENTION``: :func:`keep_logs`)."""
    unmount_rootfs_keep_upper(dirs)
    layermirror.unmount_lowers(dirs.lower)
    try:
        keep_logs(dirs)
    except OSError as exc:
        log.warning("keeping the logs of %s: %s", dirs.root.name, exc)
    for link in (dirs.upper, dirs.work):
        if link.is_symlink():
            link.unlink()
    try:
        linux.umount(str(dirs.scratch), linux.MNT_DETACH)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOENT):
            raise
    for d in (dirs.upper, dirs.work, dirs.merged, dirs.etc, dirs.execs, dirs.scratch):
        trees.remove_tree(d)  # what the sandbox wrote: any depth
    shutil.rmtree(dirs.root / "logs.kept", ignore_errors=True)
    for f in ("config.json", "init.pid", "runtime.log"):
        (dirs.root / f).unlink(missing_ok=True)


def make_dirs_inside(root: Path, path: str, owner: int | None = None) -> None:
    """``mkdir -p path`` inside ``root``, resolved by the kernel as the sandbox will see it.

    ``path`` (a workdir from the API or an image's config) is resolved with openat2's
    ``RESOLVE_IN_ROOT`` against ``root`` (:mod:`hutch.imagebuild.inroot`): the image's
    symlinks are followed inside it and ``..`` stops at its ``/``, so nothing is ever
    created on the host; a component that is not a directory (or a dangling symlink) is
    refused.
    """
    fd = inroot.open_root(root)
    try:
        os.close(inroot.Extractor(fd, follow=True, whiteouts=False, owner=owner)
                 .make_dirs(path))
    except inroot.UnsafeEntry as exc:
        raise Invalid(f"workdir {path!r}: {exc}") from exc
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP, errno.EXDEV, errno.ENAMETOOLONG):
            raise Invalid(f"workdir {path!r}: {exc.strerror}") from exc
        raise
    finally:
        os.close(fd)


def write_etc_files(dirs: SandboxDirs, hostname: str, nameserver: str | None = None,
                    owner: int | None = None, hosts_extra: str = "") -> dict[str, str]:
    """Generate /etc/hostname, /etc/hosts (with ``hosts_extra`` at its end: the peers on a
    private network) and /etc/resolv.conf (the host's, or one naming ``nameserver``),
    owned by ``owner`` (the sandbox's root) where given; returns dest -> source."""
    files = {
        "/etc/hostname": f"{hostname}\n",
        "/etc/hosts": f"127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{hostname}\n"
                      + hosts_extra,
        "/etc/resolv.conf": f"nameserver {nameserver}\n" if nameserver else _resolv_conf(),
    }
    out = {}
    for dest, text in files.items():
        src = dirs.etc / Path(dest).name
        src.write_text(text)
        src.chmod(0o644)
        if owner is not None:
            os.chown(src, owner, owner)
        out[dest] = str(src)
    return out


def _resolv_conf() -> str:
    try:
        return Path("/etc/resolv.conf").read_text()
    except OSError:
        return ""
