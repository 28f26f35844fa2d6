"""docs/api.md documents exactly the public surface: every export and every public member."""

from __future__ import annotations

import dataclasses
import enum
import inspect
import re
from pathlib import Path

import hutch

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def _headings(level: str) -> set[str]:
    return set(re.findall(rf"^{level} `([^`]+)`$", API_DOC.read_text(), flags=re.M))


def _documented_classes() -> dict[str, type]:
    return {name: obj for name in hutch.__all__
            if inspect.isclass(obj := getattr(hutch, name))
            and not issubclass(obj, BaseException | enum.Enum)}


def test_every_export_has_a_section_and_every_section_is_exported() -> None:
    documented = {h.removeprefix("hutch.") for h in _headings("##")}
    assert documented == set(hutch.__all__)


def test_every_public_member_of_an_exported_class_is_documented() -> None:
    members = _headings("###")
    for name, cls in _documented_classes().items():
        public = {m for m in dir(cls) if not m.startswith("_")}
        if dataclasses.is_dataclass(cls):
            public |= {f.name for f in dataclasses.fields(cls)}
        documented = {m.split(".", 1)[1] for m in members if m.startswith(f"{name}.")}
        assert public - documented == set(), f"{name}: undocumented members"
        for member in documented - public:
            init_source = inspect.getsource(cls.__init__)  # type: ignore[misc]
            assert f"self.{member}" in init_source, f"{name}.{member} is documented, not real"


def test_the_exception_table_names_every_exception() -> None:
    text = API_DOC.read_text()
    for name in hutch.exception.__all__:
        assert f"`{name}`" in text, name
