"""The fetch loop: read ``<prefix>notifications``, feed the channel lanes, commit what is done.

Backpressure is per channel. A lane holds at most ``slack_channel_queue_max`` records; when
the next record of a partition is for a full lane, the loop seeks that partition back to the
record and pauses it (the rest of the fetched batch of that partition is dropped, to be fetched
again), so memory stays bounded while the other partitions, and so the other channels, keep
flowing. The partition resumes as soon as that lane has room again. ``slack_max_in_flight``
still caps all lanes together. A channel waiting out a long 429 therefore stalls only the
partitions whose next record is for it (records behind it in the same partition wait too: one
app's order is kept).

Offsets: a partition is committed only up to its lowest unhandled offset (``OffsetTracker``),
never past a record still waiting in a lane, nor past a record not yet handed to one (a
paused partition's records after its blocked record are not in flight at all).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from connectors.slack.metrics import SlackMetrics
from connectors.slack.notification import Item, make_item
from connectors.slack.offsets import OffsetTracker
from connectors.slack.scheduler import ChannelScheduler

log = logging.getLogger(__name__)

FETCH_TIMEOUT_MS = 300


class FetchLoop:
    """Fetches records into the lanes (pausing partitions of full lanes) and commits."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        scheduler: ChannelScheduler,
        tracker: OffsetTracker[TopicPartition],
        metrics: SlackMetrics,
        route: Callable[[Item], str],
        max_in_flight: int,
        release_timeout_s: float,
    ) -> None:
        self.consumer = consumer
        self.scheduler = scheduler
        self.tracker = tracker
        self.metrics = metrics
        self.route = route
        self.max_in_flight = max_in_flight
        self.release_timeout_s = release_timeout_s
        self.blocked: dict[TopicPartition, str] = {}  # paused partition → the full lane

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and dispatch until ``stop`` is set."""
        while not stop.is_set():
            self.scheduler.progress.clear()
            self._resume_ready()
            room = self.max_in_flight - self.tracker.in_flight()
            if room <= 0:
                await self.scheduler.wait_progress(stop, 0.5)
                continue
            try:
                batch = await self.consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=room)
            except KafkaError as exc:
                log.warning("fetch failed, retrying", extra={"error": repr(exc)})
                await self.scheduler.wait_progress(stop, 1.0)
                continue
            for tp, records in batch.items():
                self._dispatch(tp, records)
            await self._update_backlog()
            if not batch and self.blocked:
                await self.scheduler.wait_progress(stop, 0.5)

    def _dispatch(self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Hand ``records`` of one partition to their lanes, in order, until a lane is full."""
        for record in records:
            item = make_item(tp, record.offset, record.key, record.value)
            lane_key = self.route(item)
            if not self.scheduler.has_room(lane_key):
                self._block(tp, record.offset, lane_key)
                return
            self.scheduler.dispatch(lane_key, item)

    def _block(self, tp: TopicPartition, offset: int, lane_key: str) -> None:
        """Pause ``tp`` at ``offset``: its next record waits for room in lane ``lane_key``."""
        try:
            self.consumer.seek(tp, offset)
        except KafkaError:  # IllegalStateError: revoked meanwhile; the next owner reads it
            return
        self.consumer.pause(tp)
        self.blocked[tp] = lane_key
        log.info(
            "channel queue full; partition paused",
            extra={"lane": lane_key, "partition": tp.partition, "offset": offset},
        )

    def _resume_ready(self) -> None:
        """Resume the paused partitions whose lane has room again."""
        ready = [tp for tp, lane in self.blocked.items() if self.scheduler.has_room(lane)]
        for tp in ready:
            del self.blocked[tp]
            if tp in self.consumer.assignment():
                self.consumer.resume(tp)
                log.info("partition resumed", extra={"partition": tp.partition})

    async def _update_backlog(self) -> None:
        backlog = 0
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            start = self.tracker.first_pending(tp)
            if start is None:
                try:
                    start = await self.consumer.position(tp)
                except KafkaError:  # IllegalStateError: revoked meanwhile (rebalance)
                    continue
            backlog += max(0, high - start)
        self.metrics.backlog.set(backlog)

    # ------------------------------------------------------------------ offsets

    async def commit_loop(self) -> None:
        """Commit whenever a record finishes (and every second as a safety net), forever."""
        finished = self.scheduler.finished
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), 1.0)
            finished.clear()
            if not await self.commit():
                await asyncio.sleep(0.5)

    async def commit(self) -> bool:
        """Commit each partition up to its lowest unhandled offset; False if Kafka refused."""
        offsets = self.tracker.to_commit()
        if not offsets:
            return True
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:
            log.warning("offset commit failed; will retry", extra={"error": repr(exc)})
            return False
        self.tracker.committed(offsets)
        return True

    async def release(self, revoked: set[TopicPartition]) -> None:
        """Partitions are being taken away: finish their records (bounded), commit, forget."""
        deadline = time.monotonic() + self.release_timeout_s
        progress = self.scheduler.progress
        while self.tracker.in_flight(revoked) and time.monotonic() < deadline:
            progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(), 0.2)
        await self.commit()
        self.tracker.forget(revoked)
        for tp in revoked:
            self.blocked.pop(tp, None)


class Rebalance(ConsumerRebalanceListener):
    """Finishes and commits revoked partitions' records before they move (``release``)."""

    def __init__(self) -> None:
        self.loop: FetchLoop | None = None

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Let the fetch loop finish and commit the revoked partitions' records."""
        if self.loop is not None:
            await self.loop.release(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Log the new assignment."""
        log.info(
            "slack connector assigned partitions",
            extra={"partitions": sorted(tp.partition for tp in assigned)},
        )
