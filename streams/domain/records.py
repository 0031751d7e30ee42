"""One record type per topic, each with its schema version.

These are the wire contracts; ``schemas/*.json`` document them as JSON Schema and the tests
validate every record they see against those files. Nested structures are plain JSON objects so
the JSON on the wire is exactly what the schema says. ``include_metadata=False``: consumers of
these topics are not Faust and must not see Faust's ``__faust`` field.
"""

from __future__ import annotations

from typing import Any

import orjson

SYNC_EVENT_V1 = "synctrail.sync-event/v1"
DEPLOYMENT_V1 = "synctrail.deployment/v1"
NOTIFICATION_V1 = "synctrail.notification/v1"
METRIC_V1 = "synctrail.metric/v1"
VIOLATION_V1 = "synctrail.violation/v1"
REMEDIATION_V1 = "synctrail.remediation/v1"
POLICY_RULE_V1 = "synctrail.policy-rule/v1"
DEAD_LETTER_V1 = "synctrail.dead-letter/v1"

JsonObject = dict[str, Any]


def dumps(value: Any) -> bytes:
    """Serialise a record (or any JSON value) with orjson."""
    return orjson.dumps(value)


def loads_or_none(raw: bytes | None) -> Any:
    """A record value as JSON, or ``None`` for a tombstone or bytes that are not JSON."""
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
