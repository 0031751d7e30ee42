"""Worker kill -9 on a backlog (issue 15 part 3 and 4): 5,000 sync events over 2,000 apps with a
deny rule in force; the worker is killed at 30 %, 50 % and 80 % of it and started again each
time. Bounds: no deployment missing, 0 duplicate records on deployments, notifications,
metrics, violations and remediations. ``at_least_once`` on both brokers, ``exactly_once`` on
Apache Kafka (the embedded broker has no transactions).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import orjson

from connectors.broker import EmbeddedBroker
from tests.apache_kafka.node import KafkaNode
from tests.chaos.harness import Figures, note, read_all
from tests.e2e.backlog import (
    EVENTS,
    duplicates,
    output_ends,
    produce_backlog,
    wait_done,
    wait_processed,
)
from tests.e2e.harness import Worker

PREFIX = "chaos."
POINTS = (0.3, 0.5, 0.8)


async def kill_on_backlog(
    directory: Path, *, broker: str = "embedded", guarantee: str = "at_least_once"
) -> Figures:
    """kill -9 of the worker at three points of a backlog, on ``broker`` with ``guarantee``."""
    scenario = f"worker-kill-{broker}-{guarantee.replace('_', '-')}"
    figures = Figures(scenario)
    started = time.monotonic()
    node: EmbeddedBroker | KafkaNode = (
        EmbeddedBroker(log_path=directory / "broker.log")
        if broker == "embedded"
        else KafkaNode(directory / "kafka")
    )
    workers: list[Worker] = []
    group = f"chaos-{uuid.uuid4().hex[:8]}"

    def start() -> Worker:
        index = len(workers)
        env = {
            "SYNCTRAIL_KAFKA_BOOTSTRAP": node.bootstrap,
            "SYNCTRAIL_TOPIC_PREFIX": PREFIX,
            "SYNCTRAIL_WORKER_ID": group,
            "SYNCTRAIL_PROCESSING_GUARANTEE": guarantee,
            "SYNCTRAIL_BROKER_SESSION_TIMEOUT_S": "6",
            "SYNCTRAIL_BROKER_REBALANCE_TIMEOUT_S": "6",
            "SYNCTRAIL_LOG_LEVEL": "INFO",
            "SYNCTRAIL_WORKER_DATA_DIR": str(directory / f"worker-{index}-data"),
        }
        worker = Worker(env, directory / f"worker-{index}.log")
        worker.start()
        workers.append(worker)
        return worker

    try:
        await node.start()
        bootstrap = node.bootstrap
        await produce_backlog(bootstrap, PREFIX)
        note(f"{scenario}: {EVENTS} events; kill -9 at {', '.join(f'{p:.0%}' for p in POINTS)}")
        worker = start()
        kills = []
        for share in POINTS:
            await wait_processed(bootstrap, PREFIX, share, worker)
            worker.kill()
            kills.append(await output_ends(bootstrap, PREFIX))
            worker = start()
        await wait_done(bootstrap, PREFIX, worker, EVENTS)
        figures.put("backlog_seconds", time.monotonic() - started)
        counts = await duplicates(bootstrap, PREFIX, kills)
        deployments = await read_all(bootstrap, f"{PREFIX}deployments")
        figures.put("events", EVENTS)
        figures.put(
            "deployments_missing", EVENTS - len({d.value["delivery_id"] for d in deployments})
        )
        for name, (total, _, *after) in counts.items():
            figures.put(f"{name}_records", total)
            for share, repeated in zip(POINTS, after, strict=True):
                figures.put(f"{name}_duplicates_after_kill_at_{share:.0%}", repeated)
        figures.put("duplicates", sum(count[1] for count in counts.values()))
        figures.put("skipped_as_already_written", sum(_skipped(w) for w in workers))
    finally:
        for worker in workers:
            worker.kill()
        node.kill()
    figures.put("seconds", time.monotonic() - started)
    figures.bound("deployments_missing", "==", 0)
    figures.bound("duplicates", "==", 0)
    return figures


def _skipped(worker: Worker) -> int:
    """Outputs the worker found already written and did not write again (``streams.replay``)."""
    total = 0
    for line in worker.log().splitlines():
        if "not written again" in line and line.startswith("{"):
            total += int(orjson.loads(line).get("records", 0))
    return total
