"""``at_least_once`` without repeated outputs: what a replay would write again is skipped.

Every output record the worker writes carries a header naming its source,
``synctrail-source: <sync-events partition>:<offset>:<index>``, the index counting the event's
outputs to that topic (values are unchanged: consumers need not read it). All synctrail
topics have ``SYNCTRAIL_PARTITIONS`` partitions and outputs are keyed by app like sync-events,
so an app's outputs land on the partition with the number of its sync-events partition: output
partition ``p`` is written only by the owner of sync-events partition ``p``.

A worker killed after its outputs were acknowledged but before the offsets of their events
were committed (the flusher writes outputs, then states, then lets offsets commit; Faust
commits every few seconds) decides those events again after a restart. So, before deciding the
first event of a partition after an assignment (offset ``C``: where Faust sought it, its
committed offset), :class:`ReplayGuard` reads each output topic's partition ``p`` backwards from
its end, in growing windows, down to the first record whose source offset is below ``C`` (or the
start), and keeps the ``(topic, source offset, index)`` of every record written for an event at
``C`` or later. Re-deciding those events applies and stores their state as usual but emits
only the outputs not there yet. The set is dropped once the events pass its highest offset.

Why reading back to the first older record is enough: a worker decides a partition's events in
offset order and hands their outputs over in that order, so one worker's records on output
partition ``p`` have non-decreasing source offsets; a worker that started at ``C'`` wrote every
output of ``[C', e]`` it reached (or found it there), so a later one starting at ``C >= C'``
writes nothing for offsets it finds present, and the records it does write after the first
one below ``C`` all have source offsets above everything before them.

The bound where this guarantee cannot be had: it holds while a re-decision emits the same
outputs (per topic, in the same order) as the decision it repeats. Decisions depend on the
app's state, the policy and the event, all replayed; where they depend on the wall clock
(notification timestamps do, their number does not), only the values differ. A policy change
published between the kill and the replay can change which violations a replayed event
yields: those are written as new. Without equal partition counts (a topic created by hand
with another count) the guard is off and the worker says so at start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.kafka.client import Connection, connection
from streams.kafka.offsets import log_end_offsets, windows_backwards
from streams.kafka.topics import SOURCE_HEADER

log = logging.getLogger(__name__)

#: First window read back from an output partition's end (on a quiet restart its last record is
#: already older than the replay, so a small one); each next one is 8 times as long.
FIRST_WINDOW = 16


def source_value(partition: int, offset: int, index: int) -> bytes:
    """The ``synctrail-source`` header of an event's ``index``-th output to one topic."""
    return b"%d:%d:%d" % (partition, offset, index)


def parse_source(value: bytes | None) -> tuple[int, int, int] | None:
    """``(partition, offset, index)`` of a header value, or ``None`` when it is not one."""
    if not value:
        return None
    try:
        partition, offset, index = (int(part) for part in value.split(b":"))
    except ValueError:
        return None
    return partition, offset, index


def record_source(headers: Iterable[tuple[str, bytes]] | None) -> tuple[int, int, int] | None:
    """The source of a consumed record, from its headers."""
    for key, value in headers or ():
        if key == SOURCE_HEADER:
            return parse_source(value)
    return None


class ReplayGuard:
    """The outputs already written for the events a worker is about to decide again."""

    def __init__(
        self, bootstrap: Connection, output_topics: Iterable[str], *, timeout_s: float = 60.0
    ) -> None:
        self.bootstrap = bootstrap
        self.output_topics = list(output_topics)
        self.timeout_s = timeout_s
        #: per sync-events partition, the offset its last read-back started from
        self._low: dict[int, int] = {}
        #: per partition, ``(topic, source offset, index)`` found written at or after ``_low``
        self._written: dict[int, set[tuple[str, int, int]]] = {}
        self._highest: dict[int, int] = {}
        #: outputs not written again (counted for the log and the tests)
        self.skipped = 0

    def on_assignment(self) -> None:
        """A new assignment: every partition is read back again before its next event."""
        self._low.clear()
        self._written.clear()
        self._highest.clear()

    def needs_reading(self, partition: int, offset: int) -> bool:
        """Whether the outputs of ``partition`` must be read back before deciding ``offset``."""
        low = self._low.get(partition)
        return low is None or offset < low

    def written_for(self, partition: int, offset: int) -> set[tuple[str, int, int]] | None:
        """The outputs already written for the events from ``offset`` on (``None``: none), or
        ``None`` once past the highest; call in offset order."""
        written = self._written.get(partition)
        if written is None:
            return None
        if offset > self._highest[partition]:
            del self._written[partition]  # past the replay window
            return None
        return written

    async def read_back(self, starts: Mapping[int, int]) -> None:
        """Read what the output partitions hold for events at or after ``starts[partition]``
        (one short-lived consumer for them all)."""
        started = time.monotonic()
        found: dict[int, set[tuple[str, int, int]]] = {p: set() for p in starts}
        read = 0
        consumer = AIOKafkaConsumer(
            **connection(self.bootstrap), enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            tps = [TopicPartition(t, p) for p in starts for t in self.output_topics]
            consumer.assign(tps)
            first = await consumer.beginning_offsets(tps)
            ends = await log_end_offsets(consumer, tps)  # the true ends (embedded broker)
            consumer.pause(*tps)  # no prefetching: each is read in its turn, from its end
            deadline = started + self.timeout_s
            for tp in tps:
                consumer.resume(tp)
                read += await self._read_partition(
                    consumer, tp, first[tp], ends[tp], starts[tp.partition], found, deadline
                )
                consumer.pause(tp)
        finally:
            await consumer.stop()
        for partition, offset in starts.items():
            self._low[partition] = offset
            if found[partition]:
                self._written[partition] = found[partition]
                self._highest[partition] = max(source for _, source, _ in found[partition])
            else:
                self._written.pop(partition, None)
        log.info(
            "read back the outputs of partitions before deciding them",
            extra={
                "from_offsets": {str(p): o for p, o in starts.items()},
                "records_read": read,
                "already_written": sum(len(f) for f in found.values()),
                "seconds": round(time.monotonic() - started, 3),
            },
        )

    @staticmethod
    async def _read_partition(
        consumer: AIOKafkaConsumer,
        tp: TopicPartition,
        first: int,
        end: int,
        offset: int,
        found: dict[int, set[tuple[str, int, int]]],
        deadline: float,
    ) -> int:
        read = 0
        async for records in windows_backwards(
            consumer, tp, first, end, deadline=deadline, window=FIRST_WINDOW
        ):
            read += len(records)
            older = False
            for record in records:
                source = record_source(record.headers)
                if source is None or source[0] != tp.partition or source[1] < offset:
                    older = True  # written before (or without a source): stop here
                else:
                    found[tp.partition].add((tp.topic, source[1], source[2]))
            if older:
                break
        return read
