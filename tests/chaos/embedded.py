"""Embedded-broker chaos (issue 15): what a frozen or killed broker and a killed bridge leave.

Real processes on loopback: the embedded broker, ``synctrail bridge`` and ``synctrail worker``
as child processes with their default timeouts; the load is
:func:`tests.chaos.harness.paced_load` (apps posting their deliveries in order, side by side).
Each scenario prints ``CHAOS`` lines and returns its :class:`~tests.chaos.harness.Figures`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter, defaultdict
from pathlib import Path

from connectors.broker import EmbeddedBroker, ensure_topics
from streams.topics import DEPLOYMENTS, SYNC_EVENTS
from tests.chaos.harness import (
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
            assert broker.pid is not None
            os.kill(broker.pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(frozen_s)  # the length of the stall is the scenario
            finally:
                os.kill(broker.pid, signal.SIGCONT)
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
