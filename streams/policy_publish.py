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

from streams.domain import cloudevents, records, timestamps
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
    producer: AIOKafkaProducer,
    prefix: str,
    rules: Iterable[Mapping[str, Any]],
    source: str | None = None,
) -> int:
    """Write rules to the policy topic, then a check for each to every sync-events partition.

    Each record carries its CloudEvents headers (``source``: ``SYNCTRAIL_EVENT_SOURCE``, else
    the prefix's default); a rule's time is its ``created_at``, the checks' ``n`` their
    partition.
    """
    source = source or cloudevents.default_source(prefix)
    policy_topic, events_topic = POLICY.address(prefix), SYNC_EVENTS.address(prefix)
    partitions = sorted(await producer.partitions_for(events_topic))
    count = 0
    for rule in rules:
        record = rule_record(rule)
        key = rule["id"]
        await producer.send_and_wait(
            policy_topic,
            records.dumps(record),
            key=key.encode(),
            headers=cloudevents.headers(records.POLICY_RULE_V1, record, key, source),
        )
        check = {"schema": POLICY_CHECK_V1, "rule": record}
        value, check_key = records.dumps(check), f"policy:{key}"
        for partition in partitions:
            await producer.send_and_wait(
                events_topic,
                value,
                key=check_key.encode(),
                partition=partition,
                headers=cloudevents.headers(POLICY_CHECK_V1, check, check_key, source, n=partition),
            )
        count += 1
    return count


async def remove_rule(
    producer: AIOKafkaProducer,
    prefix: str,
    rule_id: str,
    source: str | None = None,
    now: datetime | None = None,
) -> None:
    """Delete a rule: a tombstone on the compacted policy topic (its CloudEvents time and
    identity: when it was deleted)."""
    when = timestamps.format_datetime(now or datetime.now(UTC))
    headers = cloudevents.headers(
        records.POLICY_RULE_V1,
        None,
        rule_id,
        source or cloudevents.default_source(prefix),
        time=when,
    )
    await producer.send_and_wait(
        POLICY.address(prefix), None, key=rule_id.encode(), headers=headers
    )
