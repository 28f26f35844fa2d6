"""hutch.sdk.pending: Modal's names that later issues bring refuse with InvalidError that
names the call (never AttributeError or TypeError)."""

from __future__ import annotations

import inspect

import pytest

import hutch
from hutch.exception import InvalidError
from hutch.sdk.pending import ImagePending


def _public(cls: type) -> list[str]:
    return [n for n in vars(cls) if not n.startswith("_")]


@pytest.mark.parametrize("name", _public(ImagePending))
def test_image_names_refuse(name: str) -> None:
    image = hutch.Image.debian_slim()
    with pytest.raises(InvalidError, match=f"Image.{name} is not supported by this version"):
        member = getattr(image, name)  # (logs is a property: it refuses here)
        args, kwargs = _required(member)
        member(*args, **kwargs)


def _required(member: object) -> tuple[list[None], dict[str, None]]:
    """None for each parameter without a default."""
    parameters = inspect.signature(member).parameters.values()  # type: ignore[arg-type]
    return ([None for p in parameters
             if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD],
            {p.name: None for p in parameters if p.default is p.empty and p.kind is p.KEYWORD_ONLY})
