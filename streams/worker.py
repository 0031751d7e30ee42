"""``synctrail worker``: create topics, publish the policy file, run the Faust worker."""

from __future__ import annotations

import argparse
import asyncio
import logging

import faust
from aiokafka import AIOKafkaProducer

from connectors import logs
from connectors.broker import ensure_topics
from streams.app import build
from streams.policy import load_policy_file
from streams.policy_publish import publish_rules
from streams.settings import WorkerSettings

log = logging.getLogger(__name__)


async def prepare(settings: WorkerSettings) -> None:
    """Create synctrail's topics and publish the rules of ``SYNCTRAIL_POLICY_FILE``."""
    await ensure_topics(
        settings.kafka_bootstrap,
        settings.topic_prefix,
        settings.partitions,
        settings.replication_factor,
    )
    if settings.policy_file is None:
        return
    rules = load_policy_file(settings.policy_file.read_text())
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        count = await publish_rules(producer, settings.topic_prefix, rules)
    finally:
        await producer.stop()
    log.info("policy file published", extra={"rules": count, "file": str(settings.policy_file)})


def run(args: argparse.Namespace | None = None) -> int:
    """Run the worker until SIGTERM/SIGINT."""
    settings = WorkerSettings()
    logs.configure(settings.log_level, settings.log_format)
    asyncio.run(prepare(settings))
    settings.worker_data_dir.mkdir(parents=True, exist_ok=True)
    topology = build(settings)
    worker = faust.Worker(
        topology.app,
        loglevel=settings.log_level,
        override_logging=False,
        redirect_stdouts=False,
        quiet=True,  # no banner or spinner: logs are JSON lines
    )
    worker.execute_from_commandline()
    return 0
