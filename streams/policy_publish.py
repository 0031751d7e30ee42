"""Publishing policy rules: the compacted policy topic plus a check on every partition.

Used by ``synctrail policy`` and by the worker when it loads ``SYNCTRAIL_POLICY_FILE``. The
check records (``synctrail.policy-check/v1``) go to every sync-events partition so that each
worker re-checks the apps it owns, in order with their deployments.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from streams.domain import records, timestamps
from streams.kafka.topics import POLICY, SYNC_EVENTS

POLICY_CHECK_V1 = records.POLICY_CHECK_V1


def rule_record(rule: Mapping[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """A validated rule as the ``synctrail.policy-rule/v1`` record on the policy topic."""
    return {
        "schema": records.POLICY_RULE_V1,
        "id": rule["id"],
        "kind": rule["kind"],
        "reason": rule.get("reason", ""),
        "image": rule.get("image"),
        "patterns": rule.get("patterns"),
        "apps": rule.get("apps", "*"),
        "projects": rule.get("projects", "*"),
        "namespaces": rule.get("namespaces", "*"),
        "created_at": rule.get("created_at")
        or timestamps.format_datetime(now or datetime.now(UTC)),
    }


async def publish_rules(
    producer: AIOKafkaProducer, prefix: str, rules: Iterable[Mapping[str, Any]]
) -> int:
    """Write rules to the policy topic, then a check for each to every sync-events partition."""
    policy_topic, events_topic = POLICY.address(prefix), SYNC_EVENTS.address(prefix)
    partitions = sorted(await producer.partitions_for(events_topic))
    count = 0
    for rule in rules:
        record = rule_record(rule)
        await producer.send_and_wait(policy_topic, records.dumps(record), key=rule["id"].encode())
        check = records.dumps({"schema": POLICY_CHECK_V1, "rule": record})
        for partition in partitions:
            await producer.send_and_wait(
                events_topic, check, key=f"policy:{rule['id']}".encode(), partition=partition
            )
        count += 1
    return count


async def remove_rule(producer: AIOKafkaProducer, prefix: str, rule_id: str) -> None:
    """Delete a rule: a tombstone on the compacted policy topic."""
    await producer.send_and_wait(POLICY.address(prefix), None, key=rule_id.encode())
