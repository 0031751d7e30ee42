"""The benchmarks stay runnable: a tiny ``make bench`` on Apache Kafka, speed never asserted.

Each test runs a benchmark as ``make bench`` does (its own process, its own broker: a fresh
Apache Kafka node, plaintext) with the smallest load that still goes through every phase, and
checks that it prints every figure, named with its broker, and loses no event. The figures
themselves are not checked: on a shared 2-core machine they say nothing. How the stream
benchmark counts lost and repeated deployments is checked on its own, without a broker, and where its rounds begin, on Apache Kafka.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from bench.stream import PARTITIONS, DeliveryCounts, TopicReader, delivery_counts
from streams.kafka.setup import ensure_topics
from tests.support import wait_for

REPO = Path(__file__).resolve().parents[1]


def bench(module: str, *args: str, timeout: float = 240) -> dict[str, tuple[float, str]]:
    """Run ``python -m <module> <args>``; its BENCH lines as {name: (value, unit)}."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{module} exited {done.returncode}:\n{done.stderr[-4000:]}"
    figures: dict[str, tuple[float, str]] = {}
    for line in done.stdout.splitlines():
        assert line.startswith("BENCH "), f"stdout carries only BENCH lines, got {line!r}"
        _, name, value, unit = line.split(" ", 3)
        assert name not in figures, f"{name} printed twice"
        figures[name] = (float(value), unit)
    return figures


def test_stream_bench_runs_on_apache_kafka_with_both_guarantees() -> None:
    figures = bench(
        "bench.stream",
        *("--broker", "kafka", "--processing-guarantee", "both"),
        *("--apps", "20", "--events", "60", "--rate", "20", "--seconds", "1"),
    )
    for run in ("kafka", "kafka.exactly_once"):
        for name, unit in [
            ("raw_events_per_s", "events/s"),
            ("stream_events_per_s", "events/s"),
            ("stream_ratio", "x"),
            ("raw_cpu_us_per_event", "us"),
            ("stream_cpu_us_per_event", "us"),
            ("raw_broker_cpu_us_per_event", "us"),
            ("stream_broker_cpu_us_per_event", "us"),
            ("e2e_p50_ms", "ms"),
            ("e2e_p99_ms", "ms"),
            ("recovery_s", "s"),
            ("worker_rss_mb", "MiB"),
        ]:
            assert f"{run}.{name}" in figures, f"{run}.{name} missing from {sorted(figures)}"
            assert figures[f"{run}.{name}"][1] == unit
        ratio = figures[f"{run}.stream_events_per_s"][0] / figures[f"{run}.raw_events_per_s"][0]
        assert figures[f"{run}.stream_ratio"][0] == pytest.approx(ratio, rel=0.01, abs=0.01)
        assert figures[f"{run}.stream_lost_events"] == (0.0, "events")
        assert figures[f"{run}.e2e_lost_events"] == (0.0, "events")
        # by delivery id: no deployment announced twice, none of an event outside the round
        assert figures[f"{run}.stream_duplicate_deployments"] == (0.0, "records")
        assert figures[f"{run}.stream_outside_round_deployments"] == (0.0, "records")
    assert not [name for name in figures if name.startswith("embedded.")]


def test_stream_bench_counts_deployments_by_delivery_and_never_negatively() -> None:
    # the round: a, b, c; c never deployed, b twice, x (announced before the round) again, y
    # (never announced) outside the round: in the old count, 3 - 4 distinct = "-1 lost"
    counts = delivery_counts({"a", "b", "c"}, ["a", "b", "x", "b", "y"], {"x", "w"})
    assert counts == DeliveryCounts(lost=1, duplicates=2, outside=2)
    assert delivery_counts({"a", "b"}, ["b", "a"], {"x"}) == DeliveryCounts(0, 0, 0)
    assert delivery_counts({"a"}, [], set()) == DeliveryCounts(lost=1, duplicates=0, outside=0)


async def test_stream_bench_round_starts_after_records_not_yet_stable(apache_kafka, prefix):
    """Under exactly-once the broker writes a transaction's commit markers after the commit
    returned (seen 1.5-2.5 s later for a stopped worker's last transactions): a round read from
    the last stable offset then found the worker's earlier records, counted as the round's."""
    bootstrap = apache_kafka.bootstrap
    await ensure_topics(bootstrap, prefix, PARTITIONS)
    topic, earlier = f"{prefix}deployments", b'{"delivery_id": "earlier"}'
    tp = TopicPartition(topic, 0)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{prefix}txn")
    await producer.start()
    try:
        await producer.begin_transaction()
        await producer.send_and_wait(topic, earlier, partition=0)
        async with TopicReader(bootstrap, topic, committed=True) as reader:
            stable = await reader.ends()
            start = await reader.written_ends()
            assert (stable[tp], start[tp]) == (0, 1)  # the stable offset stands before it
            await producer.commit_transaction()

            async def markers_written() -> bool:
                return (await reader.ends())[tp] == 2

            await wait_for(markers_written, timeout=30, what="the commit marker")
            assert (await reader.read(stable, await reader.ends())).values == [earlier]
            assert (await reader.read(start, await reader.ends())).values == []
    finally:
        await producer.stop()


def test_bridge_bench_runs_on_apache_kafka() -> None:
    figures = bench(
        "bench.bridge",
        *("--broker", "kafka", "--seconds", "1", "--rounds", "1"),
        *("--rate", "50", "--paced-seconds", "1", "--paced-rounds", "1"),
    )
    for name in (
        "bare_req_per_s",
        "bridge_req_per_s",
        "bridge_ratio",
        "naive_req_per_s",
        "bridge_broker_cpu_us_per_req",
        "bridge_p99_at_50_rps_ms",
        "broker_p99_at_50_rps_ms",
    ):
        assert f"kafka.{name}" in figures, f"kafka.{name} missing from {sorted(figures)}"
    assert figures["kafka.bridge_non_2xx"] == (0.0, "responses")
    assert all(name.startswith("kafka.") for name in figures)
