"""Corrections to Faust 0.15 that synctrail needs on every broker it runs on, and one mode.

1. **Stream partitions are sought before they are resumed.** After a table recovery, Faust
   resumes the source partitions and only then seeks them to their committed offsets. In the
   gap the fetcher delivers records from wherever the consumer stood; the seek then moves the
   read position back, records fetched before it arrive after it, Faust takes the jump in
   offsets for a gap in the log and marks the offsets in between as acknowledged, and the
   records in flight are never processed: a worker that starts on a backlog lost one record
   batch per partition now and then (seen with ``make bench``; upstream: faust-streaming
   issues 596 and 606). Seeking while the partitions are still paused closes the gap.
   Related: Faust's "paused" is only a filter over what aiokafka prefetched, and it hands its
   live set of active partitions to a fetch that runs in the consumer thread; when the set is
   emptied meanwhile (recovery pausing the changelogs), aiokafka reads the empty set as "every
   partition" and returns source records that Faust then drops although their offsets count as
   consumed. Each fetch therefore gets a snapshot of the set.
2. **True end offsets for table recovery.** Faust recovers a table by reading its changelog up
   to the end offset that ListOffsets(latest) reports. The embedded Tansu broker answers with
   the base offset of the partition's last record batch + 1, so when that batch holds several
   records, recovery stops short and the state written by them is silently lost.
   ``streams.kafka.offsets.log_end_offsets`` reads the last batch and takes its last record's
   offset + 1 instead; on Apache Kafka both agree, so the correction costs one short fetch per
   changelog partition at each recovery and changes nothing else. With it, producers may batch
   normally, which is most of the worker's throughput.
3. **The fetch wait is a setting.** Faust hard-codes ``fetch_max_wait_ms=1500``. A broker that
   answers a long-poll fetch only at that deadline (Tansu does) adds up to 1.5 s to every
   deploy's latency; ``SYNCTRAIL_WORKER_FETCH_MAX_WAIT_MS`` bounds it.

4. **Exactly-once without Faust's transactions** (``SYNCTRAIL_PROCESSING_GUARANTEE=exactly_once``;
   Faust's own ``processing_guarantee="exactly_once"`` is broken upstream, faust-streaming
   517, 177, 323, 440, and ties reading committed data to it). ``streams.transactions`` writes
   every output, state and consumed offset in its own transactions; here, for such an app
   (``App(transactional_outputs=True)``): the worker's consumer reads ``read_committed`` (state
   written by an aborted transaction is never recovered); recovery reads each changelog up to
   its last *committed record* (``committed_end_offsets``: commit markers take offsets and are
   never delivered, so the log end or the last stable offset would leave recovery waiting for
   a record that never comes); Faust's own offset commits are skipped (the transactions commit
   the offsets; a plain commit of an older offset reaching the group coordinator after a
   transaction's would move the group back); and ``App.before_assignment`` hooks run before
   Faust handles a new assignment, so that the transactional producers of the new partitions
   fence their previous owner before recovery and the seek read anything.

Each overrides a method Faust has no public hook for (``Recovery.on_recovery_completed``,
``AIOKafkaConsumerThread.getmany``, ``_highwaters``, ``_commit`` and
``_create_worker_consumer``, ``App._on_partitions_assigned``);
``tests/streams/test_faust_fixes.py`` and the worker's restart tests pin the behaviour against
the real broker, so that a Faust upgrade that moves them fails loudly.

The app also needs three private names of Faust's for which there is no public way, each behind
one name here: :func:`as_current_event` (a table write outside the stream's own iteration),
:func:`read_position` (the lag gauge) and :class:`ChangelogNamedByItsTopic` (a table whose
changelog is a topic of our own). This module is the one place synctrail reaches into Faust's
private attributes (aiokafka's, for processes without Faust: ``streams.kafka.aiokafka_fixes``);
``tests/streams/test_upstream_fingerprints.py`` fingerprints the upstream source of each, a
source scan (``tests/streams/test_private_reaches.py``) keeps new reaches out of other modules,
and ``docs/upgrading.md`` says what to re-check on an upgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, cast

import aiokafka
import faust
import faust.streams
from faust.tables.manager import TableManager as FaustTableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.transports import ConsumerT, TransportT

from streams.kafka.client import Connection, connection, reader_args
from streams.kafka.offsets import log_end_offsets, windows_backwards


async def true_end_offsets(bootstrap: Connection, partitions: Iterable[TP]) -> dict[TP, int]:
    """The offset after each partition's last record, read with a short-lived client.

    ``bootstrap``: plaintext servers or the app's connection arguments (``App.client_args``).
    """
    tps = [aiokafka.TopicPartition(tp.topic, tp.partition) for tp in partitions]
    if not tps:
        return {}
    consumer = aiokafka.AIOKafkaConsumer(
        **connection(bootstrap), enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        ends = await log_end_offsets(consumer, tps)
    finally:
        await consumer.stop()
    return {TP(tp.topic, tp.partition): end for tp, end in ends.items()}


async def committed_end_offsets(
    bootstrap: Connection, partitions: Iterable[TP], *, timeout_s: float = 30.0
) -> dict[TP, int]:
    """The offset after each partition's last *committed data record*, read ``read_committed``.

    What table recovery must read up to on a transactional changelog (see fix 4): the last
    stable offset minus the commit and abort markers and aborted records before it. The log is
    read backwards in growing windows from the last stable offset; a partition without any
    committed record ends at its first offset.
    """
    tps = [aiokafka.TopicPartition(tp.topic, tp.partition) for tp in partitions]
    if not tps:
        return {}
    consumer = aiokafka.AIOKafkaConsumer(**reader_args(bootstrap))
    await consumer.start()
    try:
        consumer.assign(tps)
        stable = await consumer.end_offsets(tps)  # read_committed: the last stable offsets
        first = await consumer.beginning_offsets(tps)
        deadline = time.monotonic() + timeout_s
        ends: dict[TP, int] = {}
        for tp in tps:
            end = first[tp]  # no committed record at all
            async for records in windows_backwards(
                consumer, tp, first[tp], stable[tp], deadline=deadline, window=64
            ):
                if records:
                    end = records[-1].offset + 1
                    break
            ends[TP(tp.topic, tp.partition)] = end
    finally:
        await consumer.stop()
    return ends


class _SeekThenResumeRecovery(Recovery):
    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        """Faust's own, with the seek moved before ``resume_partitions`` (see fix 1)."""
        consumer = self.app.consumer
        self.log.info("Restore complete!")
        await self.app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callbacks = [
            asyncio.ensure_future(
                table.on_recovery_completed(
                    self.actives_for_table[table], self.standbys_for_table[table]
                )
            )
            for table in self.tables.values()
        ]
        if callbacks:
            await asyncio.wait(callbacks)
        assignment = consumer.assignment()
        if self.app.consumer_generation_id != generation_id:
            self.log.warning(
                "Recovery rebalancing again: app generation %r, recovery generation %r",
                self.app.consumer_generation_id,
                generation_id,
            )
            return
        if assignment:
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
        consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
        self.completed.set()
        self.app.flow_control.resume()
        consumer.resume_flow()
        await self.app._fetcher.maybe_start()  # type: ignore[attr-defined]
        self.tables.on_actives_ready()
        if not self.app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        self.app.on_rebalance_end()
        self.log.info("Worker ready")


class TableManager(FaustTableManager):
    """Faust's table manager on the corrected recovery (fix 1), without the start-up nap."""

    async def on_start(self) -> None:
        # Faust sleeps 1 s here so that tables declared late still make it; synctrail declares
        # every table in ``streams.app.build`` before the app starts, and the second counts
        # against a restarted worker's recovery time.
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = _SeekThenResumeRecovery(
                self.app, self, beacon=self.beacon, loop=self.loop
            )
        return self._recovery


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    fetch_max_wait_ms: int = 1500

    def _create_worker_consumer(
        self, transport: faust_aiokafka.Transport
    ) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # read by AIOKafkaConsumer.start() when it builds its Fetcher
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        if _transactional(self.app):  # fix 4 (Faust ties this to its own transactions)
            consumer._isolation_level = "read_committed"
        return consumer

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        if _transactional(self.app):  # fix 4: the output transactions commit the offsets
            now = time.monotonic()  # Faust's livelock warnings read this
            self.tp_last_committed_at.update({tp: now for tp in offsets})
            return True
        return cast(bool, await super()._commit(offsets))

    async def getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:
        if active_partitions is None:
            return await super().getmany(None, timeout)
        snapshot = set(active_partitions)  # see fix 1: never the live set
        if not snapshot:
            return {}
        return await super().getmany(snapshot, timeout)

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        if self.consumer.in_transaction:  # pragma: no cover - synctrail never uses them
            return await super()._highwaters(partitions)
        client_args = getattr(self.app, "client_args", None)
        bootstrap: Connection
        if client_args:  # the same connection as the app's own clients (TLS, SASL)
            bootstrap = client_args
        else:
            transport = cast(faust_aiokafka.Transport, self.transport)
            bootstrap = faust_aiokafka.server_list(transport.url, transport.default_port)
        if _transactional(self.app):
            return await committed_end_offsets(bootstrap, partitions)
        return await true_end_offsets(bootstrap, partitions)


def _transactional(app: Any) -> bool:
    return bool(getattr(app, "transactional_outputs", False))


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        thread = _ConsumerThread(self, loop=self.loop, beacon=self.beacon)
        thread.fetch_max_wait_ms = getattr(self.app, "fetch_max_wait_ms", 1500)
        return thread


class _Transport(faust_aiokafka.Transport):
    Consumer: ClassVar[type[ConsumerT]] = _Consumer


class App(faust.App):
    """A ``faust.App`` with the corrections of the module docstring."""

    def __init__(
        self,
        *args: Any,
        fetch_max_wait_ms: int = 1500,
        client_args: Mapping[str, Any] | None = None,
        transactional_outputs: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, TableManager=TableManager, **kwargs)
        self.fetch_max_wait_ms = fetch_max_wait_ms
        # streams.kafka.client.client_args: for the short-lived clients made here
        self.client_args = dict(client_args) if client_args else None
        #: fix 4: the agent commits outputs, state and offsets in its own transactions
        self.transactional_outputs = transactional_outputs
        #: awaited with each new assignment before Faust handles it (recovery, seek)
        self.before_assignment: list[Callable[[set[TP]], Awaitable[None]]] = []

    def _new_transport(self) -> TransportT:
        return _Transport(self.conf.broker_consumer, self)

    async def _on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        if not self.should_stop:
            for hook in self.before_assignment:
                await hook(set(assigned))
        await super()._on_partitions_assigned(assigned, generation_id)


@contextlib.contextmanager
def as_current_event(event: Any) -> Iterator[None]:
    """Make ``event`` Faust's current event in this task only, for the table writes inside.

    A table takes a write's changelog partition (and a RocksDB store the partition's database)
    from the current event, which Faust sets only while a stream yields one event at a time,
    not for the events of ``take_events`` written later (faust-streaming issue 497). Faust's
    ``Stream._set_current_event`` would also overwrite the stream's shared attribute, which
    ``take_events``' background buffering reads, so only the task-local context variable that
    ``faust.current_event()`` reads is set here.
    """
    token = faust.streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust.streams._current_event.reset(token)


def read_position(consumer: ConsumerT, tp: TP) -> int | None:
    """The offset of the last record of ``tp`` Faust handed to its stream (after a seek: the
    offset sought to), or ``None`` when there is none yet; Faust has no public accessor."""
    position: int | None = cast(Any, consumer)._read_offset.get(tp)
    return position


class ChangelogNamedByItsTopic:
    """Mixin for a table whose ``changelog_topic`` is a topic of our own, not Faust's default.

    Faust's partition assignor looks a table's changelog up by ``_changelog_topic_name()``, the
    default name ``<app id>-<table>-changelog``, even when ``changelog_topic`` names another
    topic, and the group join then hangs; answering with the real topic name fixes that.
    """

    changelog_topic: Any

    def _changelog_topic_name(self) -> str:
        return str(self.changelog_topic.get_topic_name())
