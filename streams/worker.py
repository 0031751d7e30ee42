"""``synctrail worker``: create topics, publish the policy file, run the Faust worker."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
import time
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from mode.types.signals import BaseSignalT

from streams import logs
from streams.domain.policy import load_policy_file
from streams.event_loop import EventLoopName, running_loop_name, uvloop_if_wanted
from streams.kafka.client import producer_args
from streams.kafka.features import fetch_wait_ms, resolve_idempotence
from streams.kafka.setup import ensure_topics_for
from streams.policy_publish import publish_rules
from streams.settings import WorkerSettings
from streams.topology import build
from streams.transactions import TransactionsUnavailable, check_broker, check_configuration

log = logging.getLogger(__name__)


async def prepare(settings: WorkerSettings) -> WorkerSettings:
    """Create synctrail's topics and publish the rules of ``SYNCTRAIL_POLICY_FILE``; with
    ``exactly_once``, check that the broker has transactions. Returns the settings with what
    depends on the broker resolved (the fetch wait)."""
    await check_broker(settings)
    await ensure_topics_for(settings)
    settings = await resolve_for_broker(settings)
    if settings.policy_file is None:
        return settings
    rules = load_policy_file(settings.policy_file.read_text())
    producer = AIOKafkaProducer(**producer_args(settings, acks="all"))
    await producer.start()
    try:
        count = await publish_rules(producer, settings.topic_prefix, rules, settings.ce_source())
    finally:
        await producer.stop()
    log.info("policy file published", extra={"rules": count, "file": str(settings.policy_file)})
    return settings


async def resolve_for_broker(settings: WorkerSettings) -> WorkerSettings:
    """``settings`` with what depends on the broker decided, asking it once: the fetch wait
    when it is not set, and ``auto`` idempotence as ``on`` or ``off`` (so the agent's
    producer does not ask again)."""
    fetch_wait_given = settings.worker_fetch_max_wait_ms is not None
    if fetch_wait_given and settings.kafka_idempotence != "auto":
        return settings
    idempotence, features = await resolve_idempotence(settings.kafka_idempotence, settings)
    wait = fetch_wait_ms(settings.worker_fetch_max_wait_ms, features)
    if not fetch_wait_given:
        log.info("fetch wait chosen for the broker", extra={"fetch_max_wait_ms": wait})
    return settings.model_copy(
        update={
            "worker_fetch_max_wait_ms": wait,
            "kafka_idempotence": "on" if idempotence else "off",
        }
    )


def event_loop_for(settings: WorkerSettings) -> EventLoopName:
    """``SYNCTRAIL_WORKER_EVENT_LOOP``, except asyncio's loop over TLS.

    With uvloop 0.23 and TLS, stopping an aiokafka consumer whose fetch is in flight waited for
    uvloop's 30 s TLS shutdown timeout three times in four (against Apache Kafka 4.1; asyncio's
    loop: 0.5 s). The worker stops a short-lived consumer at every table recovery, so each
    rebalance took 30 s longer. Producers and admin clients were not affected (the bridge keeps
    uvloop).
    """
    if settings.worker_event_loop == "uvloop" and settings.kafka_security_protocol in (
        "SSL",
        "SASL_SSL",
    ):
        log.warning(
            "uvloop waits 30 s to close a TLS consumer connection; using asyncio's event loop",
            extra={"setting": "SYNCTRAIL_WORKER_EVENT_LOOP"},
        )
        return "asyncio"
    return settings.worker_event_loop


def freeze_heap(sender: Any, /, *args: Any, signal: BaseSignalT[Any], **kwargs: Any) -> None:
    """Collect once, then exempt every object alive now from later cyclic collections.

    Connected to ``on_rebalance_complete``: what is alive then (modules, Faust's and
    aiokafka's machinery, the recovered tables' keys) lives as long as the worker, yet full
    collections rescanned it every few seconds under load, 0.1-0.4 s each, which made the
    end-to-end p99. Garbage made later is collected as usual; frozen objects that die are
    still freed by reference counting.
    """
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info(
        "heap frozen",
        extra={
            "objects": gc.get_freeze_count(),
            "seconds": round(time.perf_counter() - started, 3),
            "event_loop": running_loop_name(),
        },
    )


def run(args: argparse.Namespace | None = None) -> int:
    """Run the worker until SIGTERM/SIGINT."""
    settings = WorkerSettings()
    logs.configure(settings.log_level, settings.log_format)
    uvloop = uvloop_if_wanted(event_loop_for(settings), "SYNCTRAIL_WORKER_EVENT_LOOP")
    if uvloop is not None:
        # A policy rather than a loop: Faust and mode get their loop from it.
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        check_configuration(settings)
        settings = asyncio.run(prepare(settings))
    except TransactionsUnavailable as exc:
        log.error("worker refuses to start", extra={"reason": str(exc)})
        print(f"synctrail worker: {exc}", file=sys.stderr)
        return 2
    settings.worker_data_dir.mkdir(parents=True, exist_ok=True)
    topology = build(settings)
    topology.app.on_rebalance_complete.connect(freeze_heap)
    worker = faust.Worker(
        topology.app,
        loglevel=settings.log_level,
        override_logging=False,
        redirect_stdouts=False,
        quiet=True,  # no banner or spinner: logs are JSON lines
    )
    worker.execute_from_commandline()
    return 0
