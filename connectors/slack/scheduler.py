"""Per-channel lanes: one bounded queue and one posting task per channel.

Each fetched record goes to the lane of its channel (its pacing key), whose task posts the
lane's records one at a time, in order, at the channel's pace. A slow or rate-limited channel
therefore holds up only its own lane, while one app's messages (one partition, one channel)
keep their order.

A lane holds at most ``bound`` records (queued plus the one being posted): ``has_room`` tells
the fetch loop when a channel is full, and the fetch loop then pauses the partition that feeds
it (see ``connectors.slack.fetching``). When a lane finishes a record it marks it done in the
``OffsetTracker`` and sets ``progress`` (fetch more, resume paused partitions, commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka import TopicPartition

from connectors.slack.notification import Item
from connectors.slack.offsets import OffsetTracker

log = logging.getLogger(__name__)

INVALID_LANE = "\x00invalid"  # lane of records that are not notifications (dead-lettered)

Handle = Callable[[str, Item], Awaitable[None]]


class _Lane:
    """One channel's queue and the task that posts from it, in order."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.busy = False

    def holding(self) -> int:
        """Records waiting in this lane, the one being posted included."""
        return self.queue.qsize() + (1 if self.busy else 0)


class ChannelScheduler:
    """Routes records to per-channel lanes and runs them; reports fatal handler errors."""

    def __init__(
        self,
        handle: Handle,
        tracker: OffsetTracker[TopicPartition],
        bound: int,
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self._handle = handle
        self._tracker = tracker
        self.bound = bound
        self._on_fatal = on_fatal
        self.lanes: dict[str, _Lane] = {}
        self.progress = asyncio.Event()  # a record finished: fetch more, resume, drain
        self.finished = asyncio.Event()  # a record finished: commit (a separate waiter)
        self._closing = False

    def has_room(self, lane_key: str) -> bool:
        """Whether lane ``lane_key`` may take one more record now."""
        lane = self.lanes.get(lane_key)
        return lane is None or lane.holding() < self.bound

    def holding(self, lane_key: str) -> int:
        """Records waiting in lane ``lane_key`` (0 for a lane not started)."""
        lane = self.lanes.get(lane_key)
        return lane.holding() if lane else 0

    def dispatch(self, lane_key: str, item: Item) -> None:
        """Hand ``item`` to lane ``lane_key`` (started on first use); it is now in flight."""
        self._tracker.add(item.tp, item.offset)
        lane = self.lanes.get(lane_key)
        if lane is None:
            lane = self.lanes[lane_key] = _Lane()
            lane.task = asyncio.create_task(
                self._run_lane(lane_key, lane), name=f"slack-lane-{lane_key}"
            )
        lane.queue.put_nowait(item)

    async def _run_lane(self, lane_key: str, lane: _Lane) -> None:
        while not self._closing:
            item = await lane.queue.get()
            if self._closing:
                return
            lane.busy = True
            try:
                await self._handle(lane_key, item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A bug must not lose the record silently, nor spin on it: the record stays
                # uncommitted, the process exits 1 and a supervisor restarts it.
                log.exception("slack lane failed", extra={"lane": lane_key, "offset": item.offset})
                self._on_fatal(exc)
                return
            finally:
                lane.busy = False
            self._tracker.done(item.tp, item.offset)
            self.progress.set()
            self.finished.set()

    async def wait_progress(self, stop: asyncio.Event, timeout: float) -> None:
        """Wait until a record finishes, ``stop`` is set, or ``timeout`` seconds pass."""
        waiters = [asyncio.ensure_future(self.progress.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def drain(self, grace: float) -> None:
        """Let the messages being posted finish (up to ``grace`` s); start no new ones."""
        self._closing = True
        deadline = time.monotonic() + grace
        while any(lane.busy for lane in self.lanes.values()) and time.monotonic() < deadline:
            self.progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progress.wait(), max(0.01, deadline - time.monotonic()))
        for lane in self.lanes.values():
            if lane.task:
                lane.task.cancel()
        for lane in self.lanes.values():
            if lane.task:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await lane.task
