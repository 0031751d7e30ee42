"""Topic set-up: synctrail's topics as it wants them, created where missing and checked.

Every process calls :func:`ensure_topics_for` at start (idempotent); ``synctrail topics create
[--check]`` uses :func:`create_topics` and :func:`check_topics` for clusters where processes may
not create topics.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams.kafka.client import Connection, connection
from streams.kafka.topics import ALL_TOPICS, TopicSpec
from streams.settings import CommonSettings

_TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True)
class TopicPlan:
    """A topic as synctrail wants it."""

    name: str
    partitions: int
    replication_factor: int
    compacted: bool = False

    @property
    def cleanup_policy(self) -> str:
        return "compact" if self.compacted else "delete"


def plan_topics(
    prefix: str,
    partitions: int,
    replication_factor: int = 1,
    topics: Iterable[TopicSpec] = ALL_TOPICS,
) -> list[TopicPlan]:
    """synctrail's topics under ``prefix``."""
    return [
        TopicPlan(spec.address(prefix), partitions, replication_factor, spec.compacted)
        for spec in topics
    ]


def planned_topics(settings: CommonSettings) -> list[TopicPlan]:
    """Every topic a synctrail deployment uses: the contract topics under the prefix and,
    with worker settings, the worker's table changelog (Faust names it ``<worker id>-apps-
    changelog``; the worker creates it itself where it may)."""
    plans = plan_topics(settings.topic_prefix, settings.partitions, settings.replication_factor)
    worker_id = getattr(settings, "worker_id", None)
    if worker_id:
        plans.append(
            TopicPlan(
                f"{worker_id}-apps-changelog",
                settings.partitions,
                settings.replication_factor,
                compacted=True,
            )
        )
    return plans


async def create_topics(bootstrap: Connection, plans: Iterable[TopicPlan]) -> list[str]:
    """Create the planned topics that do not exist; existing ones are left alone.

    Returns the names that were created. ``bootstrap``: a plaintext ``host:port``, the
    settings or connection arguments (``streams.kafka.client``).
    """
    admin = AIOKafkaAdminClient(**connection(bootstrap), request_timeout_ms=10000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(
                plan.name,
                plan.partitions,
                plan.replication_factor,
                topic_configs={"cleanup.policy": "compact"} if plan.compacted else {},
            )
            for plan in plans
            if plan.name not in existing
        ]
        if not wanted:
            return []
        response = await admin.create_topics(wanted)
        created = []
        for name, code, message in response.topic_errors:
            if code == 0:
                created.append(name)
            elif code != _TOPIC_ALREADY_EXISTS:
                raise RuntimeError(f"creating topic {name} failed: error {code} {message}")
        return created
    finally:
        await admin.close()


async def check_topics(bootstrap: Connection, plans: Iterable[TopicPlan]) -> list[str]:
    """What differs between the planned topics and the cluster's, one line each (empty when
    all match): missing topics, partition counts, replication factors, cleanup policies.
    Creates nothing (existing topics only are described: a metadata request for a missing
    topic makes Apache Kafka create it when ``auto.create.topics.enable`` is on)."""
    plans = list(plans)
    admin = AIOKafkaAdminClient(**connection(bootstrap), request_timeout_ms=10000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        present = [plan for plan in plans if plan.name in existing]
        problems = [f"{plan.name}: missing" for plan in plans if plan.name not in existing]
        if not present:
            return problems
        described = {
            topic["topic"]: topic
            for topic in await admin.describe_topics([p.name for p in present])
        }
        responses = await admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, plan.name, {"cleanup.policy": None})
                for plan in present
            ]
        )
        policies = {
            resource["resource_name"]: entry["config_value"]
            for response in responses
            for resource in response.to_object()["resources"]
            for entry in resource["config_entries"]
            if entry["config_names"] == "cleanup.policy"
        }
        for plan in present:
            partitions = described[plan.name]["partitions"]
            if len(partitions) != plan.partitions:
                problems.append(
                    f"{plan.name}: {len(partitions)} partitions, want {plan.partitions} "
                    "(SYNCTRAIL_PARTITIONS)"
                )
            replicas = min((len(p["replicas"]) for p in partitions), default=0)
            if replicas != plan.replication_factor:
                problems.append(
                    f"{plan.name}: replication factor {replicas}, want "
                    f"{plan.replication_factor} (SYNCTRAIL_REPLICATION_FACTOR)"
                )
            policy = policies.get(plan.name)
            if policy != plan.cleanup_policy:
                problems.append(f"{plan.name}: cleanup.policy={policy}, want {plan.cleanup_policy}")
        return problems
    finally:
        await admin.close()


async def ensure_topics(
    bootstrap: Connection,
    prefix: str,
    partitions: int,
    replication_factor: int = 1,
    topics: Iterable[TopicSpec] = ALL_TOPICS,
) -> list[str]:
    """Create synctrail's topics under ``prefix``; existing ones are left alone.

    Returns the names that were created. Idempotent, so every process may call it at start.
    ``bootstrap``: a plaintext ``host:port`` or the settings (processes use
    :func:`ensure_topics_for`).
    """
    return await create_topics(
        bootstrap, plan_topics(prefix, partitions, replication_factor, topics)
    )


async def ensure_topics_for(
    settings: CommonSettings, topics: Iterable[TopicSpec] = ALL_TOPICS
) -> list[str]:
    """:func:`ensure_topics` with the settings' connection, prefix, partitions and
    replication factor."""
    return await ensure_topics(
        settings,
        settings.topic_prefix,
        settings.partitions,
        settings.replication_factor,
        topics,
    )
