"""Shared fixtures of the unit tests: the official OCI JSON schemas, as validators.

The schemas live in ``shared/oci-schemas`` next to the repository (``runtime-spec/`` and
``image-spec/``); ``HUTCH_OCI_SCHEMAS`` points elsewhere.  Tests that need them are skipped
with the reason when the directory is missing.  The schemas are draft-04 and ``$ref`` their
sibling files by relative name (``defs.json#/...``), some below an absolute ``id``
(``https://opencontainers.org/schema/image/...``), so every reference is resolved to the file
of the same name in the schema's own directory, never fetched from the network.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource
from referencing.jsonschema import DRAFT4

DEFAULT_SCHEMAS = Path(__file__).resolve().parents[2].parent / "shared" / "oci-schemas"


def schemas_dir() -> Path:
    override = os.environ.get("HUTCH_OCI_SCHEMAS")
    return Path(override) if override else DEFAULT_SCHEMAS


@cache
def _load(path: Path) -> Any:
    return json.loads(path.read_text())


def make_validator(directory: Path, name: str, schema: dict[str, Any] | None = None
                   ) -> Validator:
    """A validator for ``directory/name`` (or for ``schema``, whose refs are resolved in
    ``directory``)."""

    def retrieve(uri: str) -> Resource[Any]:
        base = uri.split("#", 1)[0].rsplit("/", 1)[-1]
        path = directory / base
        if not base.endswith(".json") or not path.is_file():
            raise NoSuchResource(ref=uri)
        return Resource.from_contents(_load(path), default_specification=DRAFT4)

    if schema is None:
        schema = _load(directory / name)
    cls = validator_for(schema)
    cls.check_schema(schema)
    validator: Validator = cls(schema, registry=Registry(retrieve=retrieve))
    return validator


@pytest.fixture(scope="session")
def oci_schemas() -> Path:
    path = schemas_dir()
    if not (path / "runtime-spec").is_dir() or not (path / "image-spec").is_dir():
        pytest.skip(f"OCI JSON schemas not found at {path} (set HUTCH_OCI_SCHEMAS to the "
                    "directory holding runtime-spec/ and image-spec/)")
    return path


@pytest.fixture(scope="session")
def runtime_validator(oci_schemas: Path) -> Callable[..., Validator]:
    """``runtime_validator()`` checks a whole config.json; ``runtime_validator(ref)`` checks
    against a part of it, e.g. ``"config-schema.json#/properties/process"``."""
    directory = oci_schemas / "runtime-spec"

    def get(ref: str = "config-schema.json") -> Validator:
        if ref == "config-schema.json":
            return make_validator(directory, ref)
        wrapper = {"$schema": "http://json-schema.org/draft-04/schema#", "$ref": ref}
        return make_validator(directory, "", wrapper)

    return get


@pytest.fixture(scope="session")
def image_validator(oci_schemas: Path) -> Callable[[str], Validator]:
    """``image_validator("image-manifest-schema.json")`` and the like."""
    directory = oci_schemas / "image-spec"
    return lambda name: make_validator(directory, name)
