"""hutch.Image's Debian bases through the engine's build endpoint, and enable_output."""

from __future__ import annotations

from typing import Any

import pytest

import hutch
from hutch.exception import InvalidError, NotFoundError


def test_debian_slim_resolves_to_the_default_image_silently(
        engine: dict[str, Any], capfd: pytest.CaptureFixture[str]) -> None:
    image = hutch.Image.debian_slim("3.11")
    assert image.object_id is None
    assert image.build().object_id == engine["default_image"]
    assert image.object_id == engine["default_image"]
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_unsupported_python_lists_the_supported_ones() -> None:
    with pytest.raises(InvalidError, match=r"supports 3\.10, 3\.11, 3\.12, 3\.13, 3\.14"):
        hutch.Image.debian_slim("3.9")


def test_image_from_id_and_an_unknown_id(engine: dict[str, Any]) -> None:
    sb = hutch.Sandbox.create(image=hutch.Image.from_id(engine["default_image"]), timeout=60)
    try:
        assert sb.exec("true").wait() == 0
    finally:
        sb.terminate()
    with pytest.raises(NotFoundError, match="not found"):
        hutch.Sandbox.create(image=hutch.Image.from_id("hutch/nothing:here"), timeout=60)


def test_enable_output_streams_a_build_log(engine: dict[str, Any],
                                           capfd: pytest.CaptureFixture[str]) -> None:
    """A forced rebuild under enable_output shows the base's build step and the result
    (the Debian tree under it, from mmdebstrap, stays: its recipe did not change)."""
    image = hutch.Image.debian_slim("3.11", force_build=True)
    with hutch.enable_output():
        sb = hutch.Sandbox.create(image=image, timeout=60)
    try:
        assert sb.exec("python3", "-c", "print(6 * 7)").stdout.read() == "42\n"
    finally:
        sb.terminate()
    _, err = capfd.readouterr()
    assert "python 3.11: pip wheel uv" in err and "Successfully installed" in err
    assert f"Built image debian_slim(python_version=3.11) -> {engine['default_image']}" in err
