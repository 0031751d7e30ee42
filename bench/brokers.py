"""The brokers the benchmarks run on, and how their figures are named.

``--broker embedded|kafka|both`` (``both`` by default, as in ``make bench``): each chosen broker
is started in turn in the run's temp dir, on free loopback ports, and stopped before the next.

- ``embedded``: the Tansu broker ``synctrail dev`` runs (memory only), as before.
- ``kafka``: one Apache Kafka KRaft node (``tests.apache_kafka.node.KafkaNode``, plaintext
  listener only, replication factor 1), from the jars ``make kafka-jars`` copied into
  ``var/kafka/<version>`` (``SYNCTRAIL_KAFKA_JARS`` points elsewhere). A fresh JVM: the raw
  passthrough, which runs first, is also what warms the broker's JIT up.

Every figure a benchmark prints is named ``<broker>.<figure>`` (``BENCH kafka.raw_events_per_s``),
and a ratio is only ever taken between figures of the same broker, measured in the same run.

What the benchmarks see differ between the two (measured on a shared 2-core machine with a load
average of 4 to 25, so only the large differences mean anything):

- **Long polls.** A fetch that waits for data returns on Apache Kafka as soon as a record
  arrives (5.7 ms from a produce to a consumer waiting with a 500 ms fetch wait, median); the
  embedded broker answered 150-190 ms after the produce. Both hold an empty fetch for the full
  wait. The worker's short fetch wait (``SYNCTRAIL_WORKER_FETCH_MAX_WAIT_MS``, 25 ms) exists for
  the embedded broker; end-to-end latency on Apache Kafka was 7-12 ms p50 in most runs, on the
  embedded broker 18-25 ms, with runs at 200-320 ms.
- **Produce.** One record with acks=all: 0.3 ms on the embedded broker, 1.2 ms on Apache Kafka
  (median, one at a time); at 1,000 records/s, Apache Kafka's median was the lower one in the
  one ``bench.bridge`` run (1.4 vs 4.2 ms).
- **New topics.** Apache Kafka acknowledges the first produce to a topic ~110 ms after
  CreateTopics returned (leader election; aiokafka logs "Topic ... not found in cluster
  metadata" and NotLeaderForPartition meanwhile, then retries); the embedded broker 6 ms.
- **Reading far back.** The embedded broker's fetch gets slower the further it starts from the
  end of a partition (24 ms at offset 0 of 20,000 records against 5 ms near the end); Apache
  Kafka's does not (4 and 3 ms). A worker starting on a backlog rebuilds its state from the
  changelog's start: ``stream_ready_s`` (group join and 10,000 apps rebuilt) was 1.5-6 s on
  Apache Kafka and 6-15 s on the embedded broker.
- **Warm-up.** A fresh Apache Kafka JVM used 2-3x the CPU on its first 20,000 records; hence
  the unmeasured first pass of ``bench.stream``'s raw passthrough.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BROKERS = ("embedded", "kafka")


def chosen(option: str) -> list[str]:
    """The brokers ``--broker`` selects, in the order they run."""
    return list(BROKERS) if option == "both" else [option]


@dataclass(frozen=True)
class Broker:
    """A running broker: its name (``embedded``/``kafka``), bootstrap and process id."""

    name: str
    bootstrap: str
    pid: int | None


@contextmanager
def running(name: str, work: Path) -> Iterator[Broker]:
    """Start the broker ``name`` with its files under ``work``; stop it on leaving."""
    work.mkdir(parents=True, exist_ok=True)
    if name == "embedded":
        from connectors.broker import EmbeddedBroker

        embedded = EmbeddedBroker(log_path=work / "broker.log")
        embedded.start_sync()
        try:
            yield Broker(name, embedded.bootstrap, embedded.pid)
        finally:
            embedded.stop()
    elif name == "kafka":
        from tests.apache_kafka.node import KafkaNode, KafkaNotInstalled

        node = KafkaNode(work / "kafka", secure=False)
        quiet = logging.getLogger("aiokafka")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)  # "Unable connect" while the JVM starts, every 0.1 s
        try:
            node.start_sync()
        except KafkaNotInstalled as exc:
            raise SystemExit(f"--broker kafka: {exc}") from exc
        finally:
            quiet.setLevel(level)
        try:
            yield Broker(name, node.bootstrap, node.pid)
        finally:
            node.stop()
    else:  # pragma: no cover - argparse keeps this out
        raise ValueError(f"unknown broker {name!r}")
