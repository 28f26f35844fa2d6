"""hutch.sdk.snapshots: what ``snapshot_filesystem``, ``snapshot_directory``,
``mount_image`` and ``unmount_image`` send (the engine's models take it), what they refuse
before sending, in both faces, and how the engine's answers come back."""

from __future__ import annotations

import asyncio
from pathlib import PurePosixPath
from typing import Any

import pytest

import hutch
from hutch.api import urls
from hutch.api.snapshotmodels import (
    MountImageRequest,
    SnapshotDirectoryRequest,
    SnapshotRequest,
    UnmountImageRequest,
)
from hutch.exception import (
    ConnectionError,
    EngineError,
    InvalidError,
    SnapshotCreationError,
)
from hutch.sdk import transport
from tests.unit.sdk.offline import SANDBOX_ID, RequestSent, a_sandbox, check, offline_sdk

__all__ = ["offline_sdk"]


def test_snapshot_filesystem_sends_what_the_engine_takes() -> None:
    with pytest.raises(RequestSent) as sent:
        a_sandbox().snapshot_filesystem(30, ttl=None)
    assert sent.value.path == urls.SANDBOX_SNAPSHOT_FILESYSTEM.format(sandbox_id=SANDBOX_ID)
    check("snapshot_filesystem", SnapshotRequest, sent.value.body)


def test_snapshot_directory_takes_a_pure_posix_path() -> None:
    with pytest.raises(RequestSent) as sent:
        asyncio.run(a_sandbox().snapshot_directory.aio(PurePosixPath("/proj")))
    assert sent.value.body["path"] == "/proj"
    check("snapshot_directory", SnapshotDirectoryRequest, sent.value.body)


def test_mount_and_unmount_send_what_the_engine_takes() -> None:
    image = hutch.Image.from_id("hutch/snapshot:sb-x-1")
    image._ref = "hutch/snapshot:sb-x-1"  # (as built: nothing to resolve)
    with pytest.raises(RequestSent) as sent:
        a_sandbox().mount_image("/data", image)
    assert sent.value.body == {"path": "/data", "image": "hutch/snapshot:sb-x-1"}
    check("mount_image", MountImageRequest, sent.value.body)
    with pytest.raises(RequestSent) as sent:
        a_sandbox().unmount_image("/data")
    check("unmount_image", UnmountImageRequest, sent.value.body)


@pytest.mark.parametrize("call", [
    lambda sb: sb.snapshot_directory("relative"),
    lambda sb: sb.snapshot_directory("/a\0b"),
    lambda sb: sb.snapshot_directory("/p", _experimental_encryption_key=b"k" * 32),
    lambda sb: sb.snapshot_filesystem(0),
    lambda sb: sb.snapshot_filesystem(0.5),
    lambda sb: sb.snapshot_filesystem(True),
    lambda sb: sb.snapshot_filesystem(ttl=-1),
    lambda sb: sb.mount_image("/data", "not-an-image"),
    lambda sb: sb.mount_image("data", hutch.Image.debian_slim()),
    lambda sb: sb.mount_image("/d", hutch.Image.debian_slim(),
                              _experimental_encryption_key=b"k"),
    lambda sb: sb.unmount_image(3),
])
def test_bad_arguments_are_refused_before_sending(call: Any) -> None:
    with pytest.raises(InvalidError):
        call(a_sandbox())


def _answering(monkeypatch: pytest.MonkeyPatch, answer: Any) -> None:
    async def request(self: Any, method: str, path: str, **kw: Any) -> Any:
        if isinstance(answer, BaseException):
            raise answer
        return answer

    monkeypatch.setattr(transport.EngineClient, "request", request)


def test_a_snapshot_is_an_image_with_its_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    _answering(monkeypatch, {"ref": "hutch/snapshot:sb-x-abc", "digest": "sha256:0"})
    image = a_sandbox().snapshot_filesystem()
    assert isinstance(image, hutch.Image)
    assert image.object_id == "hutch/snapshot:sb-x-abc"


def test_an_engine_failure_is_a_snapshot_creation_error(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    _answering(monkeypatch, EngineError("no room for the snapshot"))
    with pytest.raises(SnapshotCreationError, match="no room"):
        a_sandbox().snapshot_filesystem()


def test_an_unreachable_engine_stays_a_connection_error(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    _answering(monkeypatch, ConnectionError("gone"))
    with pytest.raises(ConnectionError):
        a_sandbox().snapshot_directory("/p")
