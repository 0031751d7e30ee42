"""Helpers for the Slack connector's tests: notifications, settings, an in-process connector."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from connectors.broker import free_port
from connectors.slack.connector import Connector
from connectors.slack.settings import SlackSettings
from tests.slack_server import SlackServer
from tests.support import produce, read_topic

TOKEN = "xoxb-test-token"


def notification(
    key: str,
    channel: str = "#deployments",
    *,
    app: str = "guestbook",
    app_namespace: str = "argocd",
    text: str | None = None,
    blocks: list[dict[str, Any]] | None = None,
    created_at: str = "2026-07-06T09:13:42.000Z",
) -> dict[str, Any]:
    """A ``synctrail.notification/v1`` record as the worker writes it."""
    text = text or f"{app} deployed {key}"
    return {
        "schema": "synctrail.notification/v1",
        "idempotency_key": key,
        "kind": "deployment",
        "app": app,
        "app_namespace": app_namespace,
        "project": "default",
        "channel": channel,
        "text": text,
        "blocks": blocks
        if blocks is not None
        else [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
        "deployment": None,
        "violation": None,
        "created_at": created_at,
    }


async def produce_notes(bootstrap: str, prefix: str, notes: list[dict[str, Any]]) -> None:
    """Put notifications on ``<prefix>notifications``, keyed by their app as the worker does."""
    await produce(
        bootstrap,
        f"{prefix}notifications",
        [(f"{n['app_namespace']}/{n['app']}".encode(), orjson.dumps(n)) for n in notes],
    )


def slack_env(bootstrap: str, prefix: str, server: SlackServer, **extra: str) -> dict[str, str]:
    """Environment of a ``synctrail slack`` child process talking to ``server``."""
    env = {
        "SYNCTRAIL_KAFKA_BOOTSTRAP": bootstrap,
        "SYNCTRAIL_TOPIC_PREFIX": prefix,
        "SYNCTRAIL_SLACK_TOKEN": TOKEN,
        "SYNCTRAIL_SLACK_API_URL": server.api_url,
        "SYNCTRAIL_SLACK_GROUP_ID": f"{prefix}slack",
        "SYNCTRAIL_SLACK_RATE_PER_CHANNEL_S": "0.05",
        "SYNCTRAIL_SLACK_BACKOFF_BASE_S": "0.05",
        "SYNCTRAIL_BROKER_SESSION_TIMEOUT_S": "6",
        "SYNCTRAIL_BROKER_REBALANCE_TIMEOUT_S": "6",
        "SYNCTRAIL_SLACK_METRICS_PORT": str(free_port()),
        "SYNCTRAIL_LOG_LEVEL": "INFO",
    }
    env.update(extra)
    return env


def slack_settings(
    bootstrap: str, prefix: str, server: SlackServer | None, **over: Any
) -> SlackSettings:
    """Settings for an in-process connector: fast pacing and backoff, short group timeouts."""
    values: dict[str, Any] = {
        "kafka_bootstrap": bootstrap,
        "topic_prefix": prefix,
        "slack_group_id": f"{prefix}slack",
        "slack_rate_per_channel_s": 0.05,
        "slack_backoff_base_s": 0.05,
        "broker_session_timeout_s": 6,
        "broker_rebalance_timeout_s": 6,
        "slack_metrics_port": free_port(),
    }
    if server is not None:
        values.update(slack_token=TOKEN, slack_api_url=server.api_url)
    values.update(over)
    return SlackSettings(**values)


@contextlib.asynccontextmanager
async def running(settings: SlackSettings) -> AsyncIterator[Connector]:
    """A connector running in this event loop; stopped (SIGTERM-like) on exit."""
    connector = Connector(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(connector.run(stop))
    try:
        yield connector
    finally:
        stop.set()
        code = await asyncio.wait_for(task, 30)
        assert code == 0, f"connector exited with {code}"


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets on ``topic`` per partition (partitions with one)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        out = {}
        for p in range(8):
            offset = await consumer.committed(TopicPartition(topic, p))
            if offset is not None:
                out[p] = offset
        return out
    finally:
        await consumer.stop()


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Partitions of ``topic`` that hold records, with their end offsets."""
    records = await read_topic(bootstrap, topic)
    ends: dict[int, int] = {}
    for r in records:
        ends[r.partition] = max(ends.get(r.partition, 0), r.offset + 1)
    return ends
