"""``synctrail policy deny|allow|rm|list``: change image policy at runtime.

Rules live on the compacted ``<prefix>policy`` topic, which every worker reads as a global
table. Adding a rule also asks every worker to re-check the apps it owns (retroactive flags).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams import logs
from streams.domain.policy import PolicyError, rule_id_for, validate_rule
from streams.kafka.client import consumer_args, producer_args
from streams.kafka.offsets import read_to_end
from streams.kafka.topics import POLICY
from streams.policy_publish import publish_rules, remove_rule
from streams.settings import CommonSettings


def rule_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The rule that ``policy deny`` / ``policy allow`` describes."""
    if args.policy_command == "deny":
        rule: dict[str, Any] = {"kind": "deny", "image": args.image, "reason": args.reason}
    else:
        rule = {
            "kind": "allow",
            "patterns": list(args.patterns),
            "apps": args.apps,
            "projects": args.projects,
            "namespaces": args.namespaces,
            "reason": "image outside the allowed registries/repositories",
        }
    rule = validate_rule(rule)
    rule["id"] = args.id or rule_id_for(rule)
    return rule


async def read_rules(settings: CommonSettings) -> dict[str, dict[str, Any]]:
    """The rules in force: the latest value per key on the policy topic, tombstones removed."""
    topic = POLICY.address(settings.topic_prefix)
    consumer = AIOKafkaConsumer(
        **consumer_args(settings, enable_auto_commit=False, auto_offset_reset="earliest")
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return {}
        consumer.assign(tps)
        rules: dict[str, dict[str, Any]] = {}
        async for messages in read_to_end(consumer, tps, fetch_ms=1000):
            for message in messages:
                key = message.key.decode()
                if message.value is None:
                    rules.pop(key, None)
                else:
                    rules[key] = orjson.loads(message.value)
        return rules
    finally:
        await consumer.stop()


async def _run(args: argparse.Namespace, settings: CommonSettings) -> int:
    if args.policy_command == "list":
        rules = await read_rules(settings)
        for rule_id in sorted(rules):
            print(orjson.dumps(rules[rule_id]).decode())
        if not rules:
            print("no policy rules", file=sys.stderr)
        return 0
    producer = AIOKafkaProducer(**producer_args(settings, acks="all"))
    await producer.start()
    try:
        if args.policy_command == "rm":
            await remove_rule(producer, settings.topic_prefix, args.rule_id, settings.ce_source())
            print(f"removed rule {args.rule_id}")
            return 0
        rule = rule_from_args(args)
        await publish_rules(producer, settings.topic_prefix, [rule], settings.ce_source())
        print(f"published rule {rule['id']}: {orjson.dumps(rule).decode()}")
        return 0
    finally:
        await producer.stop()


def run(args: argparse.Namespace) -> int:
    """Run one policy action."""
    settings = CommonSettings()
    logs.configure(settings.log_level, settings.log_format)
    try:
        return asyncio.run(_run(args, settings))
    except PolicyError as exc:
        print(f"synctrail policy: {exc}", file=sys.stderr)
        return 2
