"""Validate objects against the component schemas of the published OpenAI spec (OpenAPI 3.1, whose
schemas are JSON Schema 2020-12)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC = Path(__file__).resolve().parents[1].parent / "shared" / "specs" / "openai-openapi.yaml"


@functools.cache
def _spec() -> tuple[dict[str, Any], Registry]:
    with SPEC.open() as f:
        spec = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    registry = Registry().with_resource("urn:openai", Resource.from_contents(spec, default_specification=DRAFT202012))
    return spec, registry


def schema_of(name: str) -> dict[str, Any]:
    return {"$ref": f"urn:openai#/components/schemas/{name}"}


def assert_matches(obj: Any, schema_name: str) -> None:
    spec, registry = _spec()
    validator = jsonschema.Draft202012Validator(schema_of(schema_name), registry=registry)
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.path))
    assert not errors, f"{schema_name}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
