"""Exactly-once output (``SYNCTRAIL_PROCESSING_GUARANTEE=exactly_once``): one Kafka transaction
per input partition and write.

What a batch of one sync-events partition makes — deployments, notifications, metrics,
violations, remediations, dead letters, the ``apps`` changelog records — and the offset after
its last event go to the broker in one transaction: a reader with ``read_committed`` sees all of
it or none, and the consumer group's offset moves with it. A worker killed at any point leaves
either a committed transaction (its events are never read again) or an open one, which the next
owner of the partition aborts when its producer starts (same ``transactional_id``: the group,
the topic and the partition); the events are then decided again from the committed state, so
nothing is written twice and nothing is lost.

How it fits Faust (whose own ``exactly_once`` is broken upstream; see ``streams.faust_fixes``,
fix 4, for the parts reached inside Faust):

- :class:`TransactionalFlusher` keeps a transactional producer per owned partition. They are
  (re)started in ``App.before_assignment``, before Faust recovers tables or seeks: starting one
  fences the partition's previous owner and aborts its open transaction, so the changelog
  recovery and the committed offsets that follow are final. Faust's revoke handling first waits
  until every event it delivered is acknowledged, i.e. its transaction committed; a batch still
  unwritten at an assignment would belong to an ownership that may have ended, and ends the
  process instead.
- The agent decides each partition's events of a take as a batch of its own; a writer task per
  partition commits what is queued for it in one transaction (under load, several batches), in
  order. Decisions run ahead of the commits as in ``streams.agents.Flusher`` (states decided
  but not written wait in ``pending``).
- A producer fenced (another worker owns the partition now) or any failed transaction ends the
  process without committing anything more (exit code 75): a restart reads the committed state
  and offsets and carries on. A batch of a partition no longer owned is dropped, unwritten: its
  new owner decides it again.
- ``at_least_once`` does not come here: its path (``streams.agents.Flusher``) is unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from aiokafka.errors import InvalidProducerEpoch, KafkaError, ProducerFenced
from aiokafka.structs import TopicPartition
from faust.types import TP

from streams.agents import (
    DRAIN_TIMEOUT_S,
    EXIT_OUTPUT_FAILED,
    Batch,
    Flusher,
    decide_batch,
)
from streams.app import Topology
from streams.faust_fixes import as_current_event
from streams.kafka.client import client_args
from streams.kafka.produce import OutputProducer
from streams.settings import WorkerSettings

log = logging.getLogger(__name__)

#: How long a transactional producer may take to start (find its coordinator, fence).
START_TIMEOUT_S = 30.0
#: How many batches may wait for one partition's writer.
QUEUE_DEPTH = 4


class TransactionsUnavailable(RuntimeError):
    """``exactly_once`` cannot work here; the message names the setting and why."""


def check_configuration(settings: WorkerSettings) -> None:
    """Refuse settings that ``exactly_once`` cannot honour (raises TransactionsUnavailable)."""
    if settings.processing_guarantee != "exactly_once":
        return
    if not settings.worker_store.startswith("memory://"):
        raise TransactionsUnavailable(
            "SYNCTRAIL_PROCESSING_GUARANTEE=exactly_once needs SYNCTRAIL_WORKER_STORE=memory://: "
            "a local store keeps the writes of a transaction that is later aborted"
        )


async def check_broker(settings: WorkerSettings) -> None:
    """Start a transactional producer once, so that a broker without transactions stops the
    worker at start with one clear error (raises TransactionsUnavailable)."""
    if settings.processing_guarantee != "exactly_once":
        return
    probe = _producer(settings, f"{settings.worker_id}-probe", "probe")
    try:
        await asyncio.wait_for(probe.start(), START_TIMEOUT_S)
    except (KafkaError, TimeoutError) as exc:
        reason = "no transaction coordinator answered" if isinstance(exc, TimeoutError) else exc
        raise TransactionsUnavailable(
            "SYNCTRAIL_PROCESSING_GUARANTEE=exactly_once needs a broker with transactions, and "
            f"{settings.kafka_bootstrap} could not start a transactional producer ({reason}). "
            "The embedded broker has none: use at_least_once there."
        ) from exc
    finally:
        with contextlib.suppress(Exception):
            await probe.stop()


def transactional_id(group_id: str, topic: str, partition: int) -> str:
    """The id of the producer that writes for one input partition: a new owner fences the old."""
    return f"{group_id}-{topic}-{partition}"


def _producer(settings: WorkerSettings, txn_id: str, name: str) -> OutputProducer:
    return OutputProducer(
        client_args(settings),  # with the security settings
        max_batch_bytes=settings.kafka_producer_max_batch_bytes,
        client_id=f"{settings.worker_id}-outputs-{name}",
        transactional_id=txn_id,
    )


class TransactionalFlusher(Flusher):
    """Writes each partition's batches in transactions (see the module docstring).

    :meth:`submit` takes batches of one partition each; :meth:`on_assignment` must run before
    Faust handles every new assignment (``App.before_assignment``).
    """

    def __init__(self, topology: Topology) -> None:
        super().__init__(topology, outputs=None)  # type: ignore[arg-type]  # one per partition
        self.source_topic = topology.sync_events.get_topic_name()
        self.group_id = topology.app.conf.id
        self._producers: dict[int, OutputProducer] = {}
        self._queues: dict[int, asyncio.Queue[Batch]] = {}
        self._writers: dict[int, asyncio.Task[None]] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._unwritten = 0  # batches submitted, neither committed nor dropped yet

    # -- ownership ----------------------------------------------------------------------------

    async def on_assignment(self, assigned: set[TP]) -> None:
        """(Re)start one transactional producer per assigned partition, stop the others.

        Every producer is started anew, also for partitions kept: a worker that was dropped
        from the group meanwhile may have been fenced on them. Waits for transactions in flight.
        """
        partitions = {tp.partition for tp in assigned if tp.topic == self.source_topic}
        async with contextlib.AsyncExitStack() as held:
            for partition in sorted(set(self._producers) | partitions):
                await held.enter_async_context(self._lock(partition))
            if self._unwritten:
                # Faust's revoke waits until every event it delivered is acknowledged, so this
                # does not happen; if it did, those batches were decided for an ownership that
                # may have ended, and neither writing nor dropping them alone is safe.
                _exit("batches decided before this rebalance are still unwritten")
            old, self._producers = self._producers, {}
            await asyncio.gather(*(p.stop() for p in old.values()), return_exceptions=True)
            settings = self.topology.settings
            new = {
                p: _producer(
                    settings, transactional_id(self.group_id, self.source_topic, p), str(p)
                )
                for p in sorted(partitions)
            }
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(p.start() for p in new.values())), START_TIMEOUT_S
                )
            except Exception:
                _exit("could not start the transactional producers of the assigned partitions")
            self._producers = new
        log.info("transactional producers started", extra={"partitions": sorted(partitions)})

    def _lock(self, partition: int) -> asyncio.Lock:
        lock = self._locks.get(partition)
        if lock is None:
            lock = self._locks[partition] = asyncio.Lock()
        return lock

    # -- the Flusher interface ----------------------------------------------------------------

    def start(self) -> None:
        """Nothing to start: a partition's writer starts with its first batch."""

    async def submit(self, batch: Batch) -> None:
        """Queue a batch of one partition's events for its writer."""
        partition = batch.events[0].message.partition
        for event in batch.events:
            event.message.incref()  # not committable when the agent's take acks it
        for key, (_, state) in batch.states.items():
            self.pending[key] = state
        self._unwritten += 1
        queue = self._queues.get(partition)
        if queue is None:
            queue = self._queues[partition] = asyncio.Queue(QUEUE_DEPTH)
            self._writers[partition] = asyncio.get_running_loop().create_task(
                self._writer(partition, queue)
            )
        await queue.put(batch)

    async def drain(self) -> None:
        """Return once every submitted batch is committed (or dropped)."""
        await asyncio.gather(*(queue.join() for queue in list(self._queues.values())))

    async def stop(self) -> None:
        """Stop the writers (open transactions are aborted by the next owner) and producers."""
        for task in self._writers.values():
            task.cancel()
        for task in self._writers.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        producers, self._producers = self._producers, {}
        await asyncio.gather(*(p.stop() for p in producers.values()), return_exceptions=True)

    # -- writing ------------------------------------------------------------------------------

    async def _writer(self, partition: int, queue: asyncio.Queue[Batch]) -> None:
        while True:
            batches = [await queue.get()]
            while not queue.empty():
                batches.append(queue.get_nowait())
            try:
                await self._commit(partition, batches)
            except (ProducerFenced, InvalidProducerEpoch):
                _exit(f"partition {partition} has another owner now (producer fenced)")
            except Exception:
                _exit(f"could not commit a transaction for partition {partition}")
            self._unwritten -= len(batches)
            for _ in batches:
                queue.task_done()

    async def _commit(self, partition: int, batches: list[Batch]) -> None:
        async with self._lock(partition):
            output = self._producers.get(partition)
            if output is None:
                self._drop(partition, batches)
                return
            producer = output.producer
            await producer.begin_transaction()
            sent = await output.hand_over(
                await output.place([record for batch in batches for record in batch.outputs])
            )
            apps = self.topology.apps
            for batch in batches:
                for key, (event, state) in batch.states.items():
                    with as_current_event(event):  # the table writes to the event's partition
                        apps.put_app_state(key, state)
                    if self.pending.get(key) is state:  # a later batch may have decided it again
                        del self.pending[key]
            changelog = await output.hand_over(apps.take_changelog())
            end = max(event.message.offset for batch in batches for event in batch.events) + 1
            await producer.send_offsets_to_transaction(
                {TopicPartition(self.source_topic, partition): end}, self.group_id
            )
            await producer.commit_transaction()  # sends every record first
            await sent
            apps.changelog_acknowledged(await changelog)
        for batch in batches:
            self._written(batch)

    def _drop(self, partition: int, batches: list[Batch]) -> None:
        for batch in batches:
            for key, (_, state) in batch.states.items():
                if self.pending.get(key) is state:
                    del self.pending[key]
        log.warning(
            "dropping decided events of a partition no longer owned; its owner decides them",
            extra={"partition": partition, "events": sum(len(b.events) for b in batches)},
        )


def _exit(reason: str) -> None:
    log.critical(f"{reason}; exiting without committing anything more", exc_info=True)
    logging.shutdown()
    os._exit(EXIT_OUTPUT_FAILED)


def by_partition(events: list[Any]) -> list[list[Any]]:
    """A take's events as one list per partition, each in the order taken."""
    groups: dict[int, list[Any]] = {}
    for event in events:
        groups.setdefault(event.message.partition, []).append(event)
    return list(groups.values())


async def process_transactionally(flusher: TransactionalFlusher, stream: Any) -> None:
    """The agent body with ``exactly_once``: each take decided and written per partition."""
    settings = flusher.topology.settings
    try:
        async for events in stream.take_events(
            settings.worker_batch_size, settings.worker_batch_within_s
        ):
            for events_of_partition in by_partition(events):
                await flusher.submit(decide_batch(flusher, events_of_partition))
    finally:
        try:
            await asyncio.wait_for(flusher.drain(), DRAIN_TIMEOUT_S)
        except (TimeoutError, asyncio.CancelledError):
            log.warning("stopping with batches uncommitted; they are read again after a restart")
        finally:
            await flusher.stop()
