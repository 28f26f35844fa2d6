"""Per-sandbox root filesystems: overlayfs over the image's shared, read-only layers.

Each sandbox gets only an upper and a work directory of its own; the image's unpacked
layer directories are the lowerdirs, shared by every sandbox.  The engine mounts overlayfs
itself, as root of its user namespace (Linux >= 5.11 allows it there), with one mount(2)
call and no helper process.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from hutch.engine import linux
from hutch.engine.errors import Invalid
from hutch.imagebuild import inroot


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
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def execs(self) -> Path:
        return self.root / "execs"

    @property
    def stdout(self) -> Path:
        return self.root / "stdout.log"

    @property
    def stderr(self) -> Path:
        return self.root / "stderr.log"

    @property
    def stdin_fifo(self) -> Path:
        """The entrypoint's stdin; removed once the client sent EOF."""
        return self.root / "stdin"

    @property
    def pid_file(self) -> Path:
        return self.root / "init.pid"


def mount_rootfs(dirs: SandboxDirs, layers: list[Path], *, disk_mib: int | None = None
                 ) -> None:
    """Create the sandbox's directories and mount its overlay root filesystem.

    With ``disk_mib``, the upper and work directories live on a tmpfs of that size (at
    ``scratch``; ``upper`` and ``work`` are links into it), so writes beyond it fail with
    ENOSPC.  A tmpfs is the one size-limited file system a rootless engine can mount; its
    pages are memory, charged to the sandbox's memory cgroup.
    """
    for d in (dirs.merged, dirs.etc, dirs.execs):
        d.mkdir(parents=True, exist_ok=True)
    if disk_mib is None:
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
        if exc.errno not in (errno.EINVAL, errno.ENOENT):
            raise


def unmount_rootfs(dirs: SandboxDirs) -> None:
    """Unmount the overlay and remove everything but the entrypoint's logs."""
    unmount_rootfs_keep_upper(dirs)
    for link in (dirs.upper, dirs.work):
        if link.is_symlink():
            link.unlink()
    try:
        linux.umount(str(dirs.scratch), linux.MNT_DETACH)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOENT):
            raise
    for d in (dirs.upper, dirs.work, dirs.merged, dirs.etc, dirs.execs, dirs.scratch):
        shutil.rmtree(d, ignore_errors=True)
    for f in ("config.json", "init.pid", "runtime.log"):
        (dirs.root / f).unlink(missing_ok=True)


def make_dirs_inside(root: Path, path: str) -> None:
    """``mkdir -p path`` inside ``root``, resolved by the kernel as the sandbox will see it.

    ``path`` (a workdir from the API or an image's config) is resolved with openat2's
    ``RESOLVE_IN_ROOT`` against ``root`` (:mod:`hutch.imagebuild.inroot`): the image's
    symlinks are followed inside it and ``..`` stops at its ``/``, so nothing is ever
    created on the host; a component that is not a directory (or a dangling symlink) is
    refused.
    """
    fd = inroot.open_root(root)
    try:
        os.close(inroot.Extractor(fd, follow=True, whiteouts=False).make_dirs(path))
    except inroot.UnsafeEntry as exc:
        raise Invalid(f"workdir {path!r}: {exc}") from exc
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP, errno.EXDEV, errno.ENAMETOOLONG):
            raise Invalid(f"workdir {path!r}: {exc.strerror}") from exc
        raise
    finally:
        os.close(fd)


def write_etc_files(dirs: SandboxDirs, hostname: str,
                    nameserver: str | None = None) -> dict[str, str]:
    """Generate /etc/hostname, /etc/hosts and /etc/resolv.conf (the host's, or one naming
    ``nameserver``); returns dest -> source."""
    files = {
        "/etc/hostname": f"{hostname}\n",
        "/etc/hosts": f"127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{hostname}\n",
        "/etc/resolv.conf": f"nameserver {nameserver}\n" if nameserver else _resolv_conf(),
    }
    out = {}
    for dest, text in files.items():
        src = dirs.etc / Path(dest).name
        src.write_text(text)
        src.chmod(0o644)
        out[dest] = str(src)
    return out


def _resolv_conf() -> str:
    try:
        return Path("/etc/resolv.conf").read_text()
    except OSError:
        return ""
