"""hutch.api.snapshotmodels: absolute paths only, Modal's defaults, timeouts of a second
or more."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hutch.api.snapshotmodels import (
    DEFAULT_TTL,
    MountImageRequest,
    SnapshotDirectoryRequest,
    SnapshotRequest,
    UnmountImageRequest,
)


def test_defaults_are_modal_s() -> None:
    req = SnapshotRequest()
    assert req.timeout == 55 and req.ttl == DEFAULT_TTL == 30 * 24 * 3600


@pytest.mark.parametrize("timeout", [0, 0.5, -1, 10**9])
def test_timeouts_out_of_range_are_refused(timeout: float) -> None:
    with pytest.raises(ValidationError):
        SnapshotRequest(timeout=timeout)


@pytest.mark.parametrize("model", [SnapshotDirectoryRequest, UnmountImageRequest])
@pytest.mark.parametrize("path", ["relative", "", "/a\0b", "/" + "x" * 5000])
def test_paths_must_be_absolute(model: type, path: str) -> None:
    with pytest.raises(ValidationError):
        model(path=path)


def test_a_mount_names_an_image() -> None:
    assert MountImageRequest(path="/data", image="hutch/snapshot:sb-1").image
    with pytest.raises(ValidationError):
        MountImageRequest(path="/data", image="")
