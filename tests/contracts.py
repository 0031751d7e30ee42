"""Validate records against the JSON Schemas in ``schemas/`` (the documented contracts)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import msgspec
import orjson
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from streams.domain.records import RECORD_TYPES, dumps

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


def schema_registry() -> Registry:
    """Every file in schemas/, by file name and ``$id``: resolves the files' ``$ref``s locally."""
    return _registry()[0]


def schema_for(version: str) -> dict[str, Any]:
    """The JSON Schema whose title is ``version`` (e.g. ``synctrail.deployment/v1``)."""
    return _registry()[1][version]


def validate_record(value: dict[str, Any]) -> None:
    """Raise unless ``value`` matches the schema it names and decodes with its record type.

    ``jsonschema.ValidationError`` for the schema; for the type, ``msgspec.ValidationError`` or
    an ``AssertionError`` when the decoded record does not write back the same JSON (a field the
    type lacks, or null where the type writes a value).
    """
    registry, by_version = _registry()
    schema = by_version[value["schema"]]
    Draft202012Validator(schema, registry=registry).validate(value)
    record = msgspec.json.decode(orjson.dumps(value), type=RECORD_TYPES[value["schema"]])
    assert orjson.loads(dumps(record)) == value, f"{value['schema']} does not round-trip"
