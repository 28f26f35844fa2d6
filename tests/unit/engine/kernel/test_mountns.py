"""hutch.engine.kernel.mountns: which paths may take an image mount, and the thread that
joins another mount namespace (here: its own, which needs no privilege to re-enter)."""

from __future__ import annotations

import os

import pytest

from hutch.engine.kernel import mountns


@pytest.mark.parametrize("path", ["/", "/proc", "/proc/sys", "/sys", "/sys/fs/cgroup",
                                  "/dev", "/dev/shm", "relative", "", "/x/../../proc",
                                  "/a\0b", "//proc"])
def test_paths_that_are_refused(path: str) -> None:
    with pytest.raises(mountns.MountRefused):
        mountns.check_target(path)


@pytest.mark.parametrize(("path", "normal"), [("/data", "/data"), ("/mnt/../tmp/x", "/tmp/x"),
                                              ("/a//b/", "/a/b"), ("/procfs", "/procfs"),
                                              ("/devices", "/devices")])
def test_paths_that_are_taken_normalised(path: str, normal: str) -> None:
    assert mountns.check_target(path) == normal


def test_seen_path_is_relative_to_the_root(tmp_path: os.PathLike[str]) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)  # type: ignore[operator]
    root = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    inner = os.open(os.path.join(tmp_path, "a", "b"), os.O_PATH | os.O_DIRECTORY)
    try:
        assert mountns.seen_path(root, inner) == "/a/b"
        assert mountns.seen_path(root, root) == "/"
    finally:
        os.close(root)
        os.close(inner)


def test_work_in_a_namespace_runs_on_its_own_thread_and_errors_come_back() -> None:
    if os.geteuid() != 0:
        pytest.skip("setns into a mount namespace needs CAP_SYS_ADMIN")
    fd = os.open("/proc/self/ns/mnt", os.O_RDONLY)
    try:
        import threading
        main = threading.get_ident()
        assert mountns.in_namespace(fd, threading.get_ident) != main

        def fail() -> None:
            raise ValueError("inside")

        with pytest.raises(ValueError, match="inside"):
            mountns.in_namespace(fd, fail)
    finally:
        os.close(fd)
