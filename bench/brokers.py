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
