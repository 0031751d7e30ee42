"""Validate records against the JSON Schemas in ``schemas/`` (the documented contracts), and
CDEvents against the CDEvents specification's own, vendored in ``schemas/cdevents/``."""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import msgspec
import orjson
from jsonschema import Draft202012Validator
from packageurl import PackageURL
from referencing import Registry, Resource

from streams.domain import cdevents
from streams.domain.records import RECORD_TYPES, dumps

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
CDEVENTS_SCHEMAS = SCHEMAS / "cdevents" / cdevents.SPEC_VERSION
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


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


@cache
def cdevents_registry() -> Registry:
    """The vendored CDEvents schemas by ``$id``: their relative ``$ref``s resolve to these files."""
    resources = []
    for path in sorted(CDEVENTS_SCHEMAS.rglob("*.json")):
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], Resource.from_contents(schema)))
    # No ``retrieve``: a $ref the files do not hold is Unresolvable, never fetched.
    return Registry().with_resources(resources)


def validate_cdevent(event: dict[str, Any]) -> None:
    """Validate ``event`` against its type's vendored CDEvents schema; check the formats it
    declares (jsonschema asserts none without optional packages: the three by hand)."""
    schema = json.loads(
        (CDEVENTS_SCHEMAS / cdevents.SCHEMA_FILES[event["context"]["type"]]).read_text()
    )
    Draft202012Validator(schema, registry=cdevents_registry()).validate(event)
    assert RFC3339.fullmatch(event["context"]["timestamp"]), event["context"]["timestamp"]
    datetime.fromisoformat(event["context"]["timestamp"])
    assert " " not in event["context"]["source"]
    purl = event["subject"]["content"]["artifactId"]
    assert PackageURL.from_string(purl).to_string() == purl
