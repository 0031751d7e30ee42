"""Validate records against the JSON Schemas in ``schemas/`` (the documented contracts)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


@cache
def _registry() -> tuple[Registry, dict[str, dict[str, Any]]]:
    by_version: dict[str, dict[str, Any]] = {}
    resources = []
    for path in sorted(SCHEMAS.glob("*.json")):
        schema = json.loads(path.read_text())
        by_version[schema["title"]] = schema
        resource = Resource.from_contents(schema)
        resources += [(path.name, resource), (schema["$id"], resource)]
    return Registry().with_resources(resources), by_version


def schema_for(version: str) -> dict[str, Any]:
    """The JSON Schema whose title is ``version`` (e.g. ``synctrail.deployment/v1``)."""
    return _registry()[1][version]


def validate_record(value: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``value`` matches the schema it names."""
    registry, by_version = _registry()
    schema = by_version[value["schema"]]
    Draft202012Validator(schema, registry=registry).validate(value)
