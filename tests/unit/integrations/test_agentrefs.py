"""The OpenAI Agents SDK client's pure pieces: the snapshot envelope that stands for a
persisted workspace, and the mapping of the SDK's exec arguments onto hutch's."""

from __future__ import annotations

import io
import tarfile

import pytest

from hutch.integrations import agentrefs


@pytest.mark.parametrize("mode", ["snapshot_filesystem", "snapshot_directory"])
def test_an_envelope_round_trips(mode: agentrefs.PersistenceMode) -> None:
    raw = agentrefs.encode_ref("hutch/snapshot:sb-1-abcdef012345", mode)
    assert raw.startswith(agentrefs.MAGIC)
    assert agentrefs.decode_ref(raw) == (mode, "hutch/snapshot:sb-1-abcdef012345")


def test_a_tar_is_not_an_envelope() -> None:
    """``hydrate_workspace`` takes a tar too (from the ``tar`` mode or another backend)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = agentrefs.MAGIC  # (even a member holding the magic bytes)
        info = tarfile.TarInfo("a.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert agentrefs.decode_ref(buffer.getvalue()) is None


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"snapshot_id": ""}',
                                  b'{"snapshot_id": "x", "workspace_persistence": "tar"}',
                                  b'{"snapshot_id": 3, "workspace_persistence": '
                                  b'"snapshot_directory"}', b"\xff"])
def test_a_damaged_envelope_is_not_trusted(body: bytes) -> None:
    assert agentrefs.decode_ref(agentrefs.MAGIC + body) is None


def test_there_is_no_envelope_for_a_tar_or_without_an_image() -> None:
    with pytest.raises(ValueError):
        agentrefs.encode_ref("ref", "tar")
    with pytest.raises(ValueError):
        agentrefs.encode_ref("", "snapshot_directory")


@pytest.mark.parametrize(("given", "wanted"), [(None, None), (0.2, 1), (1.0, 1), (1.01, 2),
                                               (30, 30)])
def test_exec_timeouts_round_up_to_whole_seconds(given: float | None,
                                                 wanted: int | None) -> None:
    assert agentrefs.exec_timeout(given) == wanted


@pytest.mark.parametrize("bad", [0, -1, float("nan")])
def test_an_exec_timeout_must_be_positive(bad: float) -> None:
    with pytest.raises(ValueError):
        agentrefs.exec_timeout(bad)


def test_tar_excludes_are_workspace_relative_and_stable() -> None:
    assert agentrefs.tar_excludes(["./b", "a/", ".", "b", ".venv"]) == [
        "--exclude", "./.venv", "--exclude", "./a", "--exclude", "./b"]
