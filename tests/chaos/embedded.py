"""Embedded-broker chaos (issue 15): what a frozen or killed broker and a killed bridge leave.

Real processes on loopback: the embedded broker, ``synctrail bridge`` and ``synctrail worker``
as child processes with their default timeouts; the load is
:func:`tests.chaos.harness.paced_load` (apps posting their deliveries in order, side by side).
Each scenario prints ``CHAOS`` lines and returns its :class:`~tests.chaos.harness.Figures`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from pathlib import Path

from connectors.broker import EmbeddedBroker
from streams.kafka.setup import ensure_topics
from streams.kafka.topics import DEPLOYMENTS, SYNC_EVENTS
from tests.chaos.harness import (
    Answer,
    Bridge,
    Figures,
    Read,
    delivery_figures,
    note,
    paced_load,
    read_all,
    services,
)
from tests.chaos.kafka import PARTITIONS, PREFIX, Load, SpoolWatch, _env, _settled, _worker_events
from tests.e2e.harness import Worker
from tests.support import wait_for


def deployment_figures(figures: Figures, deployments: list[Read]) -> None:
    """second_deployments (a delivery id deployed more than once) and false_rollbacks.

    Every app of the load posts revisions ``rev-000000``, ``rev-000001``, ... in that order and
    never returns to an older one, so a deployment marked ``rollback`` is a false one whenever
    its revision is not older than one the app already had deployed before it, and any
    ``rollback`` whose revision was never deployed before cannot be a return either.
    """
    per_delivery = Counter(d.value["delivery_id"] for d in deployments)
    highest: dict[str, int] = defaultdict(lambda: -1)
    seen: dict[str, set[int]] = defaultdict(set)
    false_rollbacks = true_rollbacks = 0
    for record in deployments:  # by partition and offset: each app's in the order written
        value = record.value
        app = f"{value['app_namespace']}/{value['app']}"
        seq = int(str(value["revision"]).removeprefix("rev-"))
        if value.get("rollback"):
            truly = seq in seen[app] and seq < highest[app]
            if truly:
                true_rollbacks += 1
            else:
                false_rollbacks += 1
        seen[app].add(seq)
        highest[app] = max(highest[app], seq)
    figures.put("deployments", len(deployments))
    figures.put("second_deployments", sum(n - 1 for n in per_delivery.values() if n > 1))
    figures.put("false_rollbacks", false_rollbacks)
    figures.put("rollbacks_to_an_older_revision", true_rollbacks)


async def _worker_through(worker: Worker, events: int, timeout: float = 120.0) -> None:
    """Wait until the worker has decided ``events`` sync-events (or died)."""

    async def through() -> bool:
        assert worker.process is not None
        if worker.process.poll() is not None:
            raise AssertionError(f"the worker exited:\n{worker.log()[-3000:]}")
        return await _worker_events(worker) >= events

    await wait_for(through, timeout=timeout, interval=0.5, what="the worker through sync-events")


STALL_LOAD = Load(rate=100, seconds=15, fault_at=3, apps=50)
KILL_LOAD = Load(rate=150, seconds=15, fault_at=4, apps=50)


async def stall_decisions(
    directory: Path,
    load: Load = STALL_LOAD,
    *,
    frozen_s: float = 10.0,
    scenario: str = "embedded-stall-decisions",
) -> Figures:
    """The embedded broker frozen (SIGSTOP) for ``frozen_s`` while the bridge takes bare bodies
    and the worker decides them, then SIGCONT (issue 15 part 2).

    The stall may append a delivery twice on sync-events and put the copy behind the app's
    later deliveries (the bridge's fence catches most, not all: see ``duplicates``); the
    worker must decide each delivery once: no second deployment for a delivery id and no
    rollback that is not a return to an older revision.
    """
    figures = Figures(scenario)
    started = time.monotonic()
    broker = EmbeddedBroker(log_path=directory / "broker.log")
    try:
        await broker.start()
        await ensure_topics(broker.bootstrap, PREFIX, PARTITIONS)
        env = _env(broker.bootstrap, 1, "auto")
        bridge = Bridge(env, directory)
        worker = Worker(
            {**env, "SYNCTRAIL_WORKER_DATA_DIR": str(directory / "worker")},
            directory / "worker.log",
        )
        async with services(bridge.start(), worker.start()):
            await bridge.wait_broker_up()
            await worker.wait_ready(timeout=120)
            note(
                f"{scenario}: bare bodies at {load.rate}/s for {load.seconds}s over {load.apps} "
                f"apps; SIGSTOP at {load.fault_at}s for {frozen_s}s"
            )
            watch = SpoolWatch(bridge)
            watch.start()
            loading = asyncio.create_task(
                paced_load(
                    bridge.url, rate=load.rate, seconds=load.seconds, apps=load.apps, bare=True
                )
            )
            await asyncio.sleep(load.fault_at)  # the moment of the fault, not a wait for one
            broker.pause()
            try:
                await asyncio.sleep(frozen_s)  # the length of the stall is the scenario
            finally:
                broker.resume()
            answers = await loading
            await _settled(bridge)
            await watch.stop()
            watch.put(figures)
            figures.put("fence_skipped", bridge.fence_skipped())
            records = await read_all(broker.bootstrap, SYNC_EVENTS.address(PREFIX))
            delivery_figures(figures, answers, records)
            await _worker_through(worker, len(records))
            assert worker.process is not None
            figures.put("worker_running", 1 if worker.process.poll() is None else 0)
            figures.put("worker_duplicates_decided", await _outcome(worker, "duplicate"))
            deployments = await read_all(broker.bootstrap, DEPLOYMENTS.address(PREFIX))
            deployment_figures(figures, deployments)
            deployed = {d.value["delivery_id"] for d in deployments}
            accepted = {a.delivery_id for a in answers if a.status == 202 and a.delivery_id}
            figures.put("accepted_not_deployed", len(accepted - deployed))
    finally:
        broker.stop(timeout_s=0.5)
    figures.put("seconds", time.monotonic() - started)
    figures.bound("lost", "==", 0)
    figures.bound("client_errors", "==", 0)
    figures.bound("second_deployments", "==", 0)
    figures.bound("false_rollbacks", "==", 0)
    figures.bound("worker_running", "==", 1)
    return figures


async def _outcome(worker: Worker, outcome: str) -> int:
    return int(await worker.metric("synctrail_worker_events_total", outcome=outcome) or 0)


def _bridge_env(bootstrap: str, directory: Path, drain_batch: int) -> dict[str, str]:
    return {
        **_env(bootstrap, 1, "auto"),
        "SYNCTRAIL_BRIDGE_PRODUCE_TIMEOUT_S": "2",
        "SYNCTRAIL_BRIDGE_PROBE_AFTER_S": "0.1",
        "SYNCTRAIL_BRIDGE_DRAIN_INTERVAL_S": "0.2",
        "SYNCTRAIL_BRIDGE_DRAIN_BATCH": str(drain_batch),
    }


async def _in_order(url: str, apps: int, per_app: int) -> list[Answer]:
    """``apps`` apps posting ``per_app`` deliveries each, one after another, side by side."""
    # paced at 1,000 per second per app: as fast as the bridge answers
    return await paced_load(url, rate=apps * 1000.0, seconds=per_app / 1000.0, apps=apps)


async def bridge_kill_mid_drain(
    directory: Path,
    *,
    apps: int = 20,
    per_app: int = 50,
    drain_batch: int = 50,
    scenario: str = "bridge-kill-mid-drain",
) -> Figures:
    """kill -9 of the bridge while it drains its spool into a new (empty) embedded broker, then
    a restart on the same spool (issue 15 part 4).

    The broker is killed; ``apps`` x ``per_app`` deliveries are spooled; a new broker comes up
    on the same port; once the drain has started (the spool smaller than it was), the bridge
    is killed and restarted. Bounds: nothing accepted lost; at most one drain batch sent twice
    (the spool fence reads the topic back and normally leaves 0).
    """
    figures = Figures(scenario)
    started = time.monotonic()
    first = EmbeddedBroker(log_path=directory / "broker-1.log")
    await first.start()
    second = EmbeddedBroker(port=first.port, log_path=directory / "broker-2.log")
    env = _bridge_env(first.bootstrap, directory, drain_batch)
    bridge = Bridge(env, directory)
    restarted = Bridge(env, directory, port=bridge.port, log_name="bridge-2.log")
    try:
        async with services(bridge.start()):
            await bridge.wait_broker_up()
            first.stop(timeout_s=0.1)
            answers = await _in_order(bridge.url, apps, per_app)
            spooled_at_start = await _spool_records(bridge)
            await second.start()
            # the drain has begun when the spool shrinks: then kill -9, mid-drain
            shrunk = await _spool_below(bridge, spooled_at_start, timeout=60)
            bridge.kill()
            figures.put("spool_at_kill", shrunk)
            figures.put("killed_mid_drain", 1 if 0 < shrunk < spooled_at_start else 0)
        async with services(restarted.start()):
            await _settled(restarted)
            figures.put("fence_skipped", restarted.fence_skipped())
            records = await read_all(second.bootstrap, SYNC_EVENTS.address(PREFIX))
            delivery_figures(figures, answers, records)
    finally:
        first.stop(timeout_s=0.5)
        second.stop(timeout_s=0.5)
    figures.put("seconds", time.monotonic() - started)
    figures.bound("lost", "==", 0)
    figures.bound("client_errors", "==", 0)
    figures.bound("duplicates", "<=", drain_batch)
    figures.bound("killed_mid_drain", "==", 1)
    return figures


async def _spool_records(bridge: Bridge) -> int:
    state = await bridge.readyz()
    return int(state["spool"]["records"]) if state else -1


async def _spool_below(bridge: Bridge, records: int, timeout: float) -> int:
    """Poll ``/readyz`` until the spool holds fewer than ``records``; returns what it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = await _spool_records(bridge)
        if 0 <= now < records:
            return now
        await asyncio.sleep(0.01)  # a tight poll: the drain takes a fraction of a second
    raise TimeoutError(f"the spool of {records} records did not start draining in {timeout}s")


async def broker_kill(
    directory: Path,
    load: Load = KILL_LOAD,
    *,
    down_s: float = 3.0,
    scenario: str = "embedded-broker-kill",
) -> Figures:
    """kill -9 of the embedded broker under load; a new one on the same port ``down_s`` later
    (issue 15 part 4).

    The embedded broker keeps its log in memory, so what it had acknowledged before the kill is
    gone with it (use Apache Kafka where that matters: ``kafka-leader-kill``); every delivery
    the bridge accepted after the kill (spooled, or produced to the new broker) must arrive,
    once, in each app's order.
    """
    figures = Figures(scenario)
    started = time.monotonic()
    first = EmbeddedBroker(log_path=directory / "broker-1.log")
    await first.start()
    await ensure_topics(first.bootstrap, PREFIX, PARTITIONS)
    second = EmbeddedBroker(port=first.port, log_path=directory / "broker-2.log")
    bridge = Bridge(_bridge_env(first.bootstrap, directory, 500), directory)
    try:
        async with services(bridge.start()):
            await bridge.wait_broker_up()
            watch = SpoolWatch(bridge)
            watch.start()
            loading = asyncio.create_task(
                paced_load(bridge.url, rate=load.rate, seconds=load.seconds, apps=load.apps)
            )
            await asyncio.sleep(load.fault_at)  # the moment of the fault, not a wait for one
            killed_at = time.monotonic()
            assert first._process is not None
            first._process.kill()  # kill -9
            await asyncio.sleep(down_s)  # how long the broker stays down is the scenario
            await second.start()
            answers = await loading
            await _settled(bridge)
            await watch.stop()
            watch.put(figures)
            figures.put("fence_skipped", bridge.fence_skipped())
            records = await read_all(second.bootstrap, SYNC_EVENTS.address(PREFIX))
            after = [a for a in answers if a.spooled or a.sent >= killed_at]
            figures.put("accepted_before_kill_not_spooled", len(answers) - len(after))
            delivery_figures(figures, after, records)
    finally:
        first.stop(timeout_s=0.5)
        second.stop(timeout_s=0.5)
    figures.put("seconds", time.monotonic() - started)
    figures.bound("lost", "==", 0)
    figures.bound("duplicates", "==", 0)
    figures.bound("order_inversions", "==", 0)
    figures.bound("client_errors", "==", 0)
    return figures
