"""Apache Kafka chaos: a leader killed, a node shut down, a node frozen, under bridge load.

The bridge and (for the failover scenarios) the worker run as child processes with their
default timeouts; the load is :func:`tests.chaos.harness.paced_load` (apps posting their
deliveries in order, side by side). Each scenario prints ``CHAOS`` lines and returns its
:class:`~tests.chaos.harness.Figures` with the bounds it must hold.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from connectors.broker import EmbeddedBroker
from streams.kafka.setup import ensure_topics
from streams.kafka.topics import ALL_TOPICS, DEPLOYMENTS, SYNC_EVENTS
from tests.apache_kafka.node import KafkaCluster, KafkaNode
from tests.chaos.harness import (
    Bridge,
    Figures,
    delivery_figures,
    full_isr_seconds,
    note,
    paced_load,
    read_all,
    services,
)
from tests.e2e.harness import Worker
from tests.support import Service, wait_for

PREFIX = "chaos."
PARTITIONS = 8


@dataclass(frozen=True)
class Load:
    """How hard and how long the bridge is pushed, and when the fault strikes."""

    rate: float = 300.0
    seconds: float = 20.0
    fault_at: float = 5.0
    apps: int = 100


class SpoolWatch:
    """Polls the bridge's ``/readyz`` every 0.1 s: when Kafka was down, how full the spool got,
    and how long it took to empty once Kafka was back."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.samples: list[tuple[float, bool, int]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            state = await self.bridge.readyz()
            if state is not None:
                up = state["broker"] == "up"
                self.samples.append((time.monotonic(), up, int(state["spool"]["records"])))
            await asyncio.sleep(0.1)

    def put(self, figures: Figures) -> None:
        """broker_down_seconds, spool_max, drain_seconds (Kafka back up to spool empty)."""
        down = 0.0
        for (t0, up0, _), (t1, _, _) in zip(self.samples, self.samples[1:], strict=False):
            if not up0:
                down += t1 - t0
        figures.put("broker_down_seconds", down)
        figures.put("spool_max", max((n for _, _, n in self.samples), default=0))
        # from the last moment the bridge saw Kafka come back (or the first spooled record
        # while it was up) to the first sample with an empty spool after it
        drain = 0.0
        start: float | None = None
        for t, up, records in self.samples:
            if records and up and start is None:
                start = t
            if not up:
                start = None
            if records == 0 and start is not None:
                drain = max(drain, t - start)
                start = None
        figures.put("drain_seconds", drain)


def _env(bootstrap: str, replication: int, idempotence: str) -> dict[str, str]:
    return {
        "SYNCTRAIL_KAFKA_BOOTSTRAP": bootstrap,
        "SYNCTRAIL_TOPIC_PREFIX": PREFIX,
        "SYNCTRAIL_PARTITIONS": str(PARTITIONS),
        "SYNCTRAIL_REPLICATION_FACTOR": str(replication),
        "SYNCTRAIL_KAFKA_IDEMPOTENCE": idempotence,
        "SYNCTRAIL_LOG_LEVEL": "INFO",
        "SYNCTRAIL_WORKER_ID": f"chaos-{uuid.uuid4().hex[:8]}",
        "SYNCTRAIL_BROKER_SESSION_TIMEOUT_S": "10",
        "SYNCTRAIL_BROKER_REBALANCE_TIMEOUT_S": "10",
    }


async def _worker_events(worker: Worker) -> float:
    total = 0.0
    for outcome in ("deployed", "duplicate", "resync", "stale", "replayed", "dead_lettered"):
        total += await worker.metric("synctrail_worker_events_total", outcome=outcome) or 0.0
    return total


async def _failover(
    scenario: str,
    directory: Path,
    *,
    load: Load,
    shutdown: str,
    with_worker: bool,
    restart: bool = True,
    idempotence: str = "auto",
) -> Figures:
    """The bridge (and worker) on the 3-node cluster; at ``load.fault_at`` the node leading
    most sync-events partitions gets ``kill`` (SIGKILL) or ``stop`` (SIGTERM)."""
    figures = Figures(scenario)
    started = time.monotonic()
    cluster = KafkaCluster(directory / "kafka")
    try:
        await cluster.start()
        figures.put("cluster_start_seconds", time.monotonic() - started)
        bootstrap = cluster.bootstrap
        await ensure_topics(bootstrap, PREFIX, PARTITIONS, replication_factor=3)
        env = _env(bootstrap, 3, idempotence)
        bridge = Bridge(env, directory)
        running: list[Service] = [bridge.start()]
        worker: Worker | None = None
        if with_worker:
            worker = Worker(
                {**env, "SYNCTRAIL_WORKER_DATA_DIR": str(directory / "worker")},
                directory / "worker.log",
            )
            running.append(worker.start())
        async with services(*running):
            await bridge.wait_broker_up()
            if worker is not None:
                await worker.wait_ready(timeout=120)
            topic = SYNC_EVENTS.address(PREFIX)
            leaders = await cluster.leaders(topic)
            victim_id, led = Counter(leaders.values()).most_common(1)[0]
            victim = cluster.node(victim_id)
            figures.put("victim_led_partitions", led)
            note(
                f"{scenario}: load {load.rate}/s for {load.seconds}s; node {victim_id} at "
                f"{load.fault_at}s ({shutdown})"
            )
            watch = SpoolWatch(bridge)
            watch.start()
            loading = asyncio.create_task(
                paced_load(bridge.url, rate=load.rate, seconds=load.seconds, apps=load.apps)
            )
            await asyncio.sleep(load.fault_at)  # the moment of the fault, not a wait for one
            fault_ms = int(time.time() * 1000)
            fault_at = time.monotonic()
            # in a thread: waiting for the JVM to exit must not pause the load
            if shutdown == "kill":
                await asyncio.to_thread(victim.kill)
            else:
                await asyncio.to_thread(victim.stop)
                figures.put("shutdown_seconds", time.monotonic() - fault_at)
            answers = await loading
            figures.put("load_seconds", time.monotonic() - fault_at + load.fault_at)
            await _settled(bridge)
            await watch.stop()
            watch.put(figures)
            if restart:
                restarted = time.monotonic()
                await victim.start()
                figures.put("restart_seconds", time.monotonic() - restarted)
                names = [spec.address(PREFIX) for spec in ALL_TOPICS] + ["__consumer_offsets"]
                figures.put(
                    "isr_catch_up_seconds", await full_isr_seconds(bootstrap, names, 3, restarted)
                )
            figures.put("idempotence", bridge.idempotence())
            figures.put("fence_skipped", bridge.fence_skipped())
            records = await read_all(bootstrap, topic)
            delivery_figures(figures, answers, records)
            if worker is not None:
                await _worker_figures(figures, worker, bootstrap, len(records), fault_ms)
    finally:
        cluster.kill()
    figures.put("seconds", time.monotonic() - started)
    figures.bound("lost", "==", 0)
    figures.bound("duplicates", "==", 0)
    figures.bound("client_errors", "==", 0)
    if shutdown == "stop":
        figures.bound("bridge_5xx", "==", 0)
        figures.bound("drain_seconds", "<=", 10)
    if restart:
        figures.bound("isr_catch_up_seconds", "<=", 120)
    if with_worker:
        figures.bound("deployments_after_fault", ">=", 1)
        figures.bound("worker_running", "==", 1)
    return figures


async def _settled(bridge: Bridge, timeout: float = 120.0) -> None:
    """Wait until the bridge has Kafka up and nothing spooled."""

    async def drained() -> bool:
        state = await bridge.readyz()
        return bool(state and state["broker"] == "up" and state["spool"]["records"] == 0)

    await wait_for(drained, timeout=timeout, interval=0.1, what="bridge spool drained")


async def _worker_figures(
    figures: Figures, worker: Worker, bootstrap: str, events: int, fault_ms: int
) -> None:
    """deployments, deployments_after_fault (the worker kept deciding), worker_running."""

    async def caught_up() -> bool:
        assert worker.process is not None
        if worker.process.poll() is not None:
            return True  # it died: worker_running says so
        return await _worker_events(worker) >= events

    await wait_for(caught_up, timeout=180, interval=0.5, what="the worker through sync-events")
    assert worker.process is not None
    figures.put("worker_running", 1 if worker.process.poll() is None else 0)
    deployments = await read_all(bootstrap, DEPLOYMENTS.address(PREFIX))
    figures.put("deployments", len(deployments))
    figures.put("deployments_after_fault", sum(1 for d in deployments if d.timestamp_ms > fault_ms))


async def leader_kill(
    directory: Path,
    load: Load = Load(),
    *,
    with_worker: bool = True,
    restart: bool = True,
    scenario: str = "kafka-leader-kill",
) -> Figures:
    """kill -9 of the node leading most sync-events partitions, under load."""
    return await _failover(
        scenario, directory, load=load, shutdown="kill", with_worker=with_worker, restart=restart
    )


async def controlled_shutdown(
    directory: Path,
    load: Load = Load(),
    *,
    with_worker: bool = True,
    scenario: str = "kafka-controlled-shutdown",
) -> Figures:
    """SIGTERM (controlled shutdown) of the node leading most sync-events partitions."""
    return await _failover(scenario, directory, load=load, shutdown="stop", with_worker=with_worker)


async def stall(
    directory: Path,
    load: Load = Load(),
    *,
    frozen_s: float = 10.0,
    idempotence: str = "auto",
    embedded: bool = False,
    scenario: str = "kafka-stall",
) -> Figures:
    """One Apache Kafka node (or the embedded broker) frozen (SIGSTOP) for ``frozen_s`` under
    load, then SIGCONT.

    Issue 15 found on the embedded broker that a stall duplicates and reorders records: a
    produce times out, the bridge spools the record, the broker appends the original when it
    wakes up, and the drain appends it again. This measures the same on Apache Kafka.
    """
    figures = Figures(scenario)
    started = time.monotonic()
    node: KafkaNode | EmbeddedBroker = (
        EmbeddedBroker(log_path=directory / "broker.log")
        if embedded
        else KafkaNode(directory / "kafka")
    )
    try:
        await node.start()
        figures.put("broker_start_seconds", time.monotonic() - started)
        await ensure_topics(node.bootstrap, PREFIX, PARTITIONS)
        bridge = Bridge(_env(node.bootstrap, 1, idempotence), directory)
        async with services(bridge.start()):
            await bridge.wait_broker_up()
            note(
                f"{scenario}: load {load.rate}/s for {load.seconds}s; SIGSTOP at "
                f"{load.fault_at}s for {frozen_s}s (idempotence {idempotence})"
            )
            watch = SpoolWatch(bridge)
            watch.start()
            loading = asyncio.create_task(
                paced_load(bridge.url, rate=load.rate, seconds=load.seconds, apps=load.apps)
            )
            await asyncio.sleep(load.fault_at)  # the moment of the fault, not a wait for one
            node.pause()
            try:
                await asyncio.sleep(frozen_s)  # the length of the stall is the scenario
            finally:
                node.resume()
            answers = await loading
            await _settled(bridge)
            await watch.stop()
            watch.put(figures)
            figures.put("idempotence", bridge.idempotence())
            figures.put("fence_skipped", bridge.fence_skipped())
            records = await read_all(node.bootstrap, SYNC_EVENTS.address(PREFIX))
            delivery_figures(figures, answers, records)
    finally:
        node.kill()
    figures.put("seconds", time.monotonic() - started)
    figures.bound("lost", "==", 0)
    figures.bound("client_errors", "==", 0)
    return figures
