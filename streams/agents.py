"""The agent: read sync events in batches, decide with the pure functions, emit, store.

Order of effects per batch, which is what makes at-least-once safe without transactions:
1. decide every event against the state (earlier events and batches included);
2. send every output record and wait until the broker has them all;
3. write the new app states and wait until their changelog records are acknowledged;
4. only then do the batch's offsets become committable (its events are acked), and they are
   committed at once (not only on Faust's commit timer).
A crash before 4 replays the batch: nothing is lost, and the outputs the broker already has are
not written again (each carries a ``synctrail-source`` header; after an assignment the worker
reads its output partitions back before deciding: :mod:`streams.replay`). Once 3 is done a
replay finds the states applied and emits nothing.
If the broker refuses outputs, the process exits at once so that no offset is committed past
records that were never written.

Steps 2-4 run in a :class:`Flusher` task, so that the agent decides the next batch while the
broker acknowledges the last one: one round trip per batch instead of two on the path of every
event. Its outputs are handed to the producer at once, behind the earlier batches' on every
partition; decided states wait in :attr:`Flusher.pending` (read before the table) until their
outputs are acknowledged, because a state must never be durable before its outputs are.

With ``SYNCTRAIL_PROCESSING_GUARANTEE=exactly_once``, :mod:`streams.transactions` writes each
partition's outputs, states and offsets in one transaction instead (same decisions, no repeats).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson

from streams.app import Topology
from streams.domain import cloudevents, records, timestamps
from streams.domain.decide import (
    HEALTH_TRANSITION,
    Decision,
    InvalidSyncEvent,
    app_key_of,
    decide,
    metric_event,
    recheck_policy,
    validate_event,
)
from streams.domain.notify import (
    deployment_notifications,
    health_notification,
    violation_notification,
)
from streams.faust_fixes import as_current_event
from streams.kafka.client import client_args
from streams.kafka.features import resolve_idempotence
from streams.kafka.produce import Headers, OutputProducer
from streams.kafka.topics import (
    CDEVENTS,
    DEAD_LETTERS,
    DEPLOYMENTS,
    METRICS,
    NOTIFICATIONS,
    REMEDIATIONS,
    VIOLATIONS,
)
from streams.policy_publish import POLICY_CHECK_V1
from streams.replay import ReplayGuard, source_value

log = logging.getLogger(__name__)

EXIT_OUTPUT_FAILED = 75  # EX_TEMPFAIL: the supervisor should restart us
# On stop, how long decided batches may take to be written (else they are read again).
DRAIN_TIMEOUT_S = 10.0


@dataclass
class Batch:
    """Outputs and state updates collected while deciding one batch."""

    events: list[Any] = field(default_factory=list)
    #: ``(topic, key, value, source header, CloudEvents headers)``; see :mod:`streams.replay`
    #: and :mod:`streams.domain.cloudevents`
    outputs: list[tuple[str, bytes, bytes, bytes | None, Headers | None]] = field(
        default_factory=list
    )
    #: the ``ce_source`` of the outputs (``SYNCTRAIL_EVENT_SOURCE``)
    event_source: str = ""
    states: dict[str, tuple[Any, dict[str, Any]]] = field(default_factory=dict)
    outcomes: list[tuple[str, float | None]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    # the event being decided: its partition and offset, its outputs per topic so far, and
    # the outputs a replay must not write again (streams.replay)
    _source: tuple[int, int] | None = None
    _counts: dict[str, int] = field(default_factory=dict)
    _written: set[tuple[str, int, int]] | None = None
    skipped: int = 0

    def begin(
        self, partition: int, offset: int, written: set[tuple[str, int, int]] | None = None
    ) -> None:
        """The next outputs are the event at ``partition``/``offset``'s; ``written``: those of
        its outputs already on their topics (not emitted again)."""
        self._source = (partition, offset)
        self._counts = {}
        self._written = written

    def emit(self, topic: str, key: str, value: Any, headers: Headers | None = None) -> None:
        """Add a record (a dict, or a Struct) to the outputs with its CloudEvents headers
        (``headers`` when given, as a CDEvent's, else computed from its ``schema``)."""
        source = None
        if self._source is not None:
            partition, offset = self._source
            index = self._counts.get(topic, 0)
            self._counts[topic] = index + 1
            if self._written is not None and (topic, offset, index) in self._written:
                self.skipped += 1
                return
            source = source_value(partition, offset, index)
        if isinstance(value, msgspec.Struct):
            value = msgspec.to_builtins(value)  # as records.dumps would: the same bytes
        if headers is None:
            schema = value.get("schema") if type(value) is dict else None
            if schema:
                headers = cloudevents.headers(schema, value, key, self.event_source)
        self.outputs.append((topic, key.encode(), records.dumps(value), source, headers))


def _dead_letter(
    topology: Topology, event: Any, reason: str, exc: BaseException, now: datetime
) -> records.DeadLetter:
    message = event.message
    return records.dead_letter(
        "worker",
        reason=reason,
        error_type=type(exc).__name__,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key.decode("utf-8", errors="replace") if message.key else None,
        raw=message.value,
        failed_at=timestamps.format_datetime(now),
    )


def _rules(topology: Topology) -> list[dict[str, Any]]:
    return [rule for rule in topology.policy.values() if isinstance(rule, dict)]


def _emit_decision(topology: Topology, batch: Batch, decision: Decision, now: datetime) -> None:
    t = topology.topic
    key = decision.app_key
    if decision.deployment is not None:
        batch.emit(t(DEPLOYMENTS.name), key, decision.deployment)
        for note in deployment_notifications(decision.deployment, topology.notify, now):
            batch.emit(t(NOTIFICATIONS.name), key, note)
    if decision.cdevent is not None:
        cdevent = decision.cdevent
        batch.emit(t(CDEVENTS.name), key, cdevent, cloudevents.cdevent_headers(cdevent))
    for violation in decision.violations:
        batch.emit(t(VIOLATIONS.name), key, violation)
        if decision.deployment is None and decision.state is not None:
            note = violation_notification(violation, decision.state, topology.notify, now)
            batch.emit(t(NOTIFICATIONS.name), key, note)
    if decision.remediation is not None:
        batch.emit(t(REMEDIATIONS.name), key, decision.remediation)
    for metric in decision.metrics:
        batch.emit(t(METRICS.name), key, metric)
        if metric.get("kind") == HEALTH_TRANSITION and decision.state is not None:
            health_note = health_notification(metric, decision.state, topology.notify, now)
            if health_note is not None:  # None: off, or not news (Healthy, no Degraded before)
                batch.emit(t(NOTIFICATIONS.name), key, health_note)


def _state_for(flusher: Flusher, batch: Batch, key: str) -> Mapping[str, Any] | None:
    if key in batch.states:
        return batch.states[key][1]
    return flusher.state(key)


def _already_applied(state: Mapping[str, Any] | None, event: Any) -> bool:
    """True when the state already includes this record: a replay after a crash.

    State is made durable before the offset is committed, so a restarted worker can see
    records again whose effects (outputs and state) are complete; they must change nothing.
    """
    return (
        state is not None
        and state.get("partition") == event.message.partition
        and state.get("offset", -1) >= event.message.offset
    )


def _stamp(state: dict[str, Any], event: Any) -> None:
    """Record which source record the state reflects (see ``_already_applied``)."""
    state["partition"] = event.message.partition
    state["offset"] = event.message.offset


def _handle_sync_event(
    flusher: Flusher, batch: Batch, event: Any, value: dict[str, Any], now: datetime
) -> None:
    topology = flusher.topology
    validate_event(value)
    key = app_key_of(value)
    message_key = event.message.key.decode() if event.message.key else None
    if message_key != key:
        raise InvalidSyncEvent(f"record key {message_key!r} does not match app {key!r}")
    state = _state_for(flusher, batch, key)
    if _already_applied(state, event):
        batch.outcomes.append(("replayed", None))
        return
    decision = decide(value, state, _rules(topology), now=now, ctx=topology.decide_context)
    if decision.state is not None:
        _stamp(decision.state, event)
        batch.states[key] = (event, decision.state)
    _emit_decision(topology, batch, decision, now)
    latency = next(
        (m["latency_seconds"] for m in decision.metrics if m["kind"] == "deployment"), None
    )
    batch.outcomes.append((decision.outcome, latency))


def _handle_policy_check(
    flusher: Flusher, batch: Batch, event: Any, value: dict[str, Any], now: datetime
) -> None:
    topology = flusher.topology
    rule = value.get("rule")
    if not isinstance(rule, dict) or not isinstance(rule.get("id"), str):
        raise InvalidSyncEvent("policy check without a rule id")
    rules = [r for r in _rules(topology) if r.get("id") != rule["id"]] + [rule]
    partition = event.message.partition
    # Only this partition's apps, and only their states are decoded.
    candidates = dict(topology.apps.app_states(containing=b'"partition":%d' % partition))
    candidates.update(flusher.pending)  # decided, outputs not yet acknowledged: newer
    candidates.update({key: state for key, (_, state) in batch.states.items()})  # newest
    for key, state in candidates.items():
        if state.get("partition") != partition or _already_applied(state, event):
            continue
        decision = recheck_policy(state, rules, now=now)
        if decision is None:
            continue
        new_state = decision.state or dict(state)
        _stamp(new_state, event)
        batch.states[key] = (event, new_state)
        _emit_decision(topology, batch, decision, now)
        topology.metrics.retroactive.inc()


class Flusher:
    """Writes decided batches in order: outputs, then states, then lets their offsets commit.

    :meth:`submit` hands a batch's outputs to the producer and queues the batch; a background
    task waits for their acknowledgement, writes the states to the table, waits for the
    changelog's, and acks the events. ``depth`` batches may wait behind the one being written,
    after which :meth:`submit` waits: that bounds memory and how far decisions run ahead.
    """

    def __init__(self, topology: Topology, outputs: OutputProducer, depth: int = 1) -> None:
        self.topology = topology
        self.outputs = outputs
        #: States decided but not in the table yet (their outputs are not acknowledged).
        self.pending: dict[str, dict[str, Any]] = {}
        self._queue: asyncio.Queue[tuple[Batch, asyncio.Future[Any]]] = asyncio.Queue(depth)
        self._task: asyncio.Task[None] | None = None
        self._commit_wanted = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None

    def state(self, key: str) -> Mapping[str, Any] | None:
        """The newest state of ``key``: decided, or else stored."""
        pending = self.pending.get(key)
        return pending if pending is not None else self.topology.apps.app_state(key)

    def start(self) -> None:
        """Start writing; call from the running loop."""
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run())
        self._committer = loop.create_task(self._commit_acked())

    async def submit(self, batch: Batch) -> None:
        """Hand over a decided batch; returns once it is queued (see the class docstring)."""
        for event in batch.events:
            event.message.incref()  # not committable when the agent's take acks it
        for key, (_, state) in batch.states.items():
            self.pending[key] = state
        try:
            acknowledged = await self.outputs.hand_over(await self.outputs.place(batch.outputs))
        except Exception:
            _exit_unwritten()
        await self._queue.put((batch, acknowledged))

    async def drain(self) -> None:
        """Return once every submitted batch is written and acked."""
        await self._queue.join()

    async def stop(self) -> None:
        """Stop writing; batches not written stay unacked and are read again after a restart."""
        for task in (self._task, self._committer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _run(self) -> None:
        while True:
            batch, acknowledged = await self._queue.get()
            try:
                await self._write(batch, acknowledged)
            except Exception:
                _exit_unwritten()
            self._queue.task_done()

    async def _write(self, batch: Batch, acknowledged: asyncio.Future[Any]) -> None:
        topology = self.topology
        await acknowledged
        apps = topology.apps
        for key, (event, state) in batch.states.items():
            with as_current_event(event):  # the table writes to the event's partition
                apps.put_app_state(key, state)
            if self.pending.get(key) is state:  # a later batch may have decided it again
                del self.pending[key]
        apps.changelog_acknowledged(await self.outputs.send_placed(apps.take_changelog()))
        self._written(batch)

    def _written(self, batch: Batch) -> None:
        """The batch's outputs and states are durable: let its offsets commit, count it."""
        topology = self.topology
        consumer, on_message_out = topology.app.consumer, topology.app.sensors.on_message_out
        for event in batch.events:
            message = event.message
            if message.ack(consumer):  # the last reference: the offset may be committed
                on_message_out(message.tp, message.offset, message)
        self._commit_wanted.set()
        done = datetime.now(UTC)
        metrics = topology.metrics
        for outcome, latency in batch.outcomes:
            metrics.events.labels(outcome).inc()
            if latency is not None:
                metrics.processing.observe(latency + (done - batch.now).total_seconds())
        metrics.batch_seconds.observe(time.perf_counter() - batch.started)

    async def _commit_acked(self) -> None:
        """Commit the acked offsets as soon as a batch is written, one commit at a time (the
        batches written meanwhile go into the next). Faust itself commits only on its timer
        (``SYNCTRAIL_WORKER_COMMIT_INTERVAL_S``): on a backlog, seconds' worth of events that a
        restarted worker would decide again."""
        consumer = self.topology.app.consumer
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted.clear()
            try:
                # False also when it only waited for a commit in flight (Faust's timer), which
                # may have missed this batch: the second call commits it, or finds nothing
                if not await consumer.commit():
                    await consumer.commit()
            except Exception:
                log.exception("could not commit offsets; the next batch or the timer retries")


def _exit_unwritten() -> None:
    log.critical(
        "could not write outputs or state; exiting so that no offset is committed",
        exc_info=True,
    )
    logging.shutdown()
    os._exit(EXIT_OUTPUT_FAILED)


async def process_sync_events(topology: Topology, stream: Any) -> None:
    """The agent body with at_least_once: every sync event to a decision, every decision to
    records (with exactly_once, ``streams.topology`` runs ``streams.transactions``' instead).
    """
    settings = topology.settings
    idempotence, _ = await resolve_idempotence(settings.kafka_idempotence, settings)
    outputs = OutputProducer(
        client_args(settings),
        max_batch_bytes=settings.kafka_producer_max_batch_bytes,
        client_id=f"{settings.worker_id}-outputs",
        enable_idempotence=idempotence,
    )
    await outputs.start()
    if topology.replay_guard is not None and not await _equal_partition_counts(topology, outputs):
        topology.replay_guard = None
    flusher = Flusher(topology, outputs)
    flusher.start()
    try:
        await _process(flusher, stream)
    finally:
        try:
            # what was decided is written if the broker allows (a stop cancels this wait)
            await asyncio.wait_for(flusher.drain(), DRAIN_TIMEOUT_S)
        except (TimeoutError, asyncio.CancelledError):
            log.warning("stopping with batches unwritten; they are read again after a restart")
        finally:
            await flusher.stop()
            await outputs.stop()


#: the topics the agent writes outputs to (each record with its source: streams.replay)
OUTPUT_TOPICS = (
    DEPLOYMENTS,
    NOTIFICATIONS,
    METRICS,
    VIOLATIONS,
    REMEDIATIONS,
    DEAD_LETTERS,
    CDEVENTS,
)


async def _equal_partition_counts(topology: Topology, outputs: OutputProducer) -> bool:
    """Whether every output topic has as many partitions as sync-events (each app's outputs
    then land on its sync-events partition's number); warns when not."""
    source = topology.sync_events.get_topic_name()
    counts = {
        name: await outputs.partition_count(name)
        for name in [source, *(topology.topic(t.name) for t in OUTPUT_TOPICS)]
    }
    if len(set(counts.values())) == 1:
        return True
    log.warning(
        "output topics and sync-events differ in partition count: a worker restarted after a "
        "crash may write outputs again (at_least_once); create them with SYNCTRAIL_PARTITIONS",
        extra={"partitions": counts},
    )
    return False


def decide_batch(flusher: Flusher, events: list[Any]) -> Batch:
    """Decide every event of one take against the newest states; nothing is written yet."""
    topology = flusher.topology
    # events kept as given: Faust's take_events yields a new list each time
    batch = Batch(events=events, event_source=topology.event_source)
    now = batch.now
    guard = topology.replay_guard
    for event in events:
        message = event.message
        written = guard.written_for(message.partition, message.offset) if guard else None
        batch.begin(message.partition, message.offset, written)
        try:
            value = orjson.loads(event.message.value)
            if isinstance(value, dict) and value.get("schema") == POLICY_CHECK_V1:
                _handle_policy_check(flusher, batch, event, value, now)
            else:
                _handle_sync_event(flusher, batch, event, value, now)
        except Exception as exc:  # every failure is dead-lettered, never dropped
            reason = (
                str(exc)
                if isinstance(exc, InvalidSyncEvent | orjson.JSONDecodeError)
                else (f"unexpected error: {exc}")
            )
            log.warning(
                "dead-lettering a record",
                extra={
                    "reason": reason,
                    "partition": event.message.partition,
                    "offset": event.message.offset,
                },
                exc_info=not isinstance(exc, InvalidSyncEvent | orjson.JSONDecodeError),
            )
            key = event.message.key.decode("utf-8", "replace") if event.message.key else ""
            batch.emit(
                topology.topic(DEAD_LETTERS.name),
                key,
                _dead_letter(topology, event, reason, exc, now),
            )
            batch.emit(
                topology.topic(METRICS.name), key, metric_event("dead_letter", key, None, now)
            )
            batch.outcomes.append(("dead_lettered", None))
    return batch


async def _process(flusher: Flusher, stream: Any) -> None:
    settings = flusher.topology.settings
    guard = flusher.topology.replay_guard
    async for events in stream.take_events(
        settings.worker_batch_size, settings.worker_batch_within_s
    ):
        if guard is not None:
            await _read_back(flusher, guard, events)
        batch = decide_batch(flusher, events)
        if batch.skipped:
            guard.skipped += batch.skipped  # type: ignore[union-attr]
            log.info("outputs already written not written again", extra={"records": batch.skipped})
        await flusher.submit(batch)


async def _read_back(flusher: Flusher, guard: ReplayGuard, events: list[Any]) -> None:
    """Before deciding the first events of a partition after an assignment (or any earlier
    than those it last read back from), read what its output partitions already hold."""
    first: dict[int, int] = {}
    for event in events:
        partition, offset = event.message.partition, event.message.offset
        if partition not in first and guard.needs_reading(partition, offset):
            first[partition] = offset
    if not first:
        return
    await flusher.drain()  # this worker's own batches in flight are on their topics first
    await guard.read_back(first)


def guard_replays(topology: Topology) -> None:
    """With at_least_once: read the output partitions back after each assignment, so that a
    replayed event's outputs already written are not written again (``streams.replay``)."""
    guard = topology.replay_guard = ReplayGuard(
        client_args(topology.settings), [topology.topic(t.name) for t in OUTPUT_TOPICS]
    )

    async def _assigned(assigned: set[Any]) -> None:
        guard.on_assignment()

    topology.app.before_assignment.append(_assigned)


def register(topology: Topology, body: Callable[[Any], Awaitable[None]]) -> None:
    """Attach the agent, running ``body`` over the sync-events stream, and the housekeeping
    timer to the app."""
    app = topology.app

    @app.agent(topology.sync_events, name="process_sync_events")
    async def _agent(stream: Any) -> None:
        await body(stream)

    @app.timer(interval=5.0)
    async def _gauges() -> None:
        metrics = topology.metrics
        try:
            for partition, lag in topology.consumer_lag().items():
                metrics.lag.labels(str(partition)).set(lag)
            metrics.table_keys.labels("apps").set(len(topology.apps))
            metrics.table_keys.labels("policy").set(len(topology.policy))
        except Exception:  # gauges must never take the worker down
            log.exception("could not update worker gauges")
