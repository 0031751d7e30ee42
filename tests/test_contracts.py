"""The documented contracts stay in step: topics table, JSON Schemas, AsyncAPI document."""

from __future__ import annotations

import json

import yaml
from jsonschema import Draft202012Validator

from streams import wire
from streams.domain import records
from streams.kafka.topics import ALL_TOPICS
from tests.contracts import SCHEMAS, schema_for


def test_every_schema_file_is_a_valid_json_schema():
    files = sorted(SCHEMAS.glob("*.json"))
    assert files
    for path in files:
        Draft202012Validator.check_schema(json.loads(path.read_text()))


def test_every_topic_has_a_schema_and_an_asyncapi_channel():
    doc = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text())
    addresses = {ch["address"]: ch for ch in doc["channels"].values()}
    messages = doc["components"]["messages"]
    for spec in ALL_TOPICS:
        channel = addresses.get(spec.address("synctrail."))
        assert channel is not None, f"asyncapi.yaml has no channel for {spec.name}"
        names = {
            messages[ref["$ref"].rsplit("/", 1)[1]]["name"] for ref in channel["messages"].values()
        }
        assert spec.schema in names, f"{spec.name}: asyncapi messages {names} lack {spec.schema}"
        assert schema_for(spec.schema)["title"] == spec.schema
        compacted = channel["bindings"]["kafka"]["topicConfiguration"]["cleanup.policy"] == [
            "compact"
        ]
        assert compacted == spec.compacted, spec.name
    for message in messages.values():
        target = message["payload"]["schema"]["$ref"]
        assert (SCHEMAS / target).exists(), f"{message['name']} points at missing {target}"


def test_record_classes_match_their_schemas_fields():
    pairs = {
        wire.SyncEvent: records.SYNC_EVENT_V1,
        wire.Notification: records.NOTIFICATION_V1,
        wire.MetricEvent: records.METRIC_V1,
        wire.Violation: records.VIOLATION_V1,
        wire.Remediation: records.REMEDIATION_V1,
        wire.PolicyRule: records.POLICY_RULE_V1,
        wire.DeadLetter: records.DEAD_LETTER_V1,
        wire.Deployment: records.DEPLOYMENT_V1,
    }
    for cls, version in pairs.items():
        schema = schema_for(version)
        assert set(cls._options.fields) == set(schema["properties"]), cls.__name__
