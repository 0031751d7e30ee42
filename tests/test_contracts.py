"""The documented contracts stay in step: record types, JSON Schemas, topics, AsyncAPI document."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from jsonschema import Draft202012Validator

from streams.domain import cdevents, records, schemas
from streams.kafka.topics import ALL_TOPICS, CDEVENTS
from tests.contracts import SCHEMAS, schema_for


def test_every_schema_file_is_a_valid_json_schema():
    files = sorted(SCHEMAS.glob("*.json"))
    assert files
    for path in files:
        Draft202012Validator.check_schema(json.loads(path.read_text()))


def test_schema_files_are_generated_from_the_record_types_and_current():
    assert schemas.stale_files() == [], "run: python -m streams.domain.schemas"
    generated = {name for name, _, _ in [*schemas.REGISTRY, *schemas.INBOUND]}
    assert {p.name for p in SCHEMAS.glob("*.json")} == generated


def test_the_generator_check_fails_on_a_stale_file_and_writing_fixes_it(tmp_path: Path):
    registry = [e for e in schemas.REGISTRY if e[0] == "violation.v1.json"]
    assert schemas.stale_files(tmp_path, registry, []) == ["violation.v1.json"]  # missing
    assert schemas.write(tmp_path, registry, []) == ["violation.v1.json"]
    assert schemas.stale_files(tmp_path, registry, []) == []
    path = tmp_path / "violation.v1.json"
    path.write_text(path.read_text().replace('"deploy"', '"deployed"'))
    assert schemas.stale_files(tmp_path, registry, []) == ["violation.v1.json"]
    assert schemas.main(["--check", "--dir", str(tmp_path)]) == 1


def test_every_record_type_has_the_schema_titled_with_its_version_and_the_same_fields():
    for version, cls in records.RECORD_TYPES.items():
        schema = schema_for(version)
        fields = {"schema", *(f.encode_name for f in msgspec.structs.fields(cls))}
        assert fields == set(schema["properties"]), cls.__name__
        required = {"schema", *(f.encode_name for f in msgspec.structs.fields(cls) if f.required)}
        assert required == set(schema["required"]), cls.__name__


def test_a_record_of_another_type_is_refused_naming_the_schema_field():
    violation = {"schema": records.VIOLATION_V1, "app": "a"}
    with pytest.raises(msgspec.ValidationError, match=r"\$\.schema"):
        msgspec.json.decode(json.dumps(violation), type=records.Notification)


def _channel_messages(doc: dict[str, Any], channel: dict[str, Any]) -> list[dict[str, Any]]:
    messages = doc["components"]["messages"]
    return [messages[ref["$ref"].rsplit("/", 1)[1]] for ref in channel["messages"].values()]


def _assert_cdevents_channel(messages: list[dict[str, Any]]) -> None:
    """The cdevents topic: one message per CDEvent type, its payload the vendored spec schema."""
    assert CDEVENTS.schema == f"cdevents/{cdevents.SPEC_VERSION}"
    assert {m["name"] for m in messages} == set(cdevents.SCHEMA_FILES)
    for message in messages:
        target = f"./cdevents/{cdevents.SPEC_VERSION}/{cdevents.SCHEMA_FILES[message['name']]}"
        assert message["payload"]["schema"]["$ref"] == target, message["name"]
        assert message["headers"]["$ref"] == "#/components/schemas/cdeventsHeaders"


def test_every_topic_has_a_schema_and_an_asyncapi_channel():
    doc = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text())
    addresses = {ch["address"]: ch for ch in doc["channels"].values()}
    messages = doc["components"]["messages"]
    for spec in ALL_TOPICS:
        channel = addresses.get(spec.address("synctrail."))
        assert channel is not None, f"asyncapi.yaml has no channel for {spec.name}"
        on_channel = _channel_messages(doc, channel)
        assert {m["contentType"] for m in on_channel} == {spec.content_type}, spec.name
        if spec is CDEVENTS:
            _assert_cdevents_channel(on_channel)
        else:
            names = {m["name"] for m in on_channel}
            assert spec.schema in names, (
                f"{spec.name}: asyncapi messages {names} lack {spec.schema}"
            )
            assert schema_for(spec.schema)["title"] == spec.schema
        compacted = channel["bindings"]["kafka"]["topicConfiguration"]["cleanup.policy"] == [
            "compact"
        ]
        assert compacted == spec.compacted, spec.name
    for message in messages.values():
        target = message["payload"]["schema"]["$ref"]
        assert (SCHEMAS / target).exists(), f"{message['name']} points at missing {target}"
