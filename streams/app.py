"""The Faust app: its topics and tables (``streams.topology`` composes them with the agent).

    <prefix>sync-events ──▶ process_sync_events ──▶ deployments, notifications, metrics,
         (key ns/app)          │    ▲                 violations, remediations, dead-letters
                               ▼    │
                       table ``apps`` (per-app state, changelog-backed, partitioned like
                       sync-events) and global table ``policy`` (the compacted policy topic)

Policy changes reach every partition as ``synctrail.policy-check/v1`` control records on
sync-events (see ``streams.policy_publish``), so a retroactive check runs in order with that
partition's deployments and its state writes go to the right changelog partition.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import faust
import orjson
from faust.types import TP

from streams import (
    codec,  # noqa: F401 - registers the orjson codec
    faust_fixes,
)
from streams.domain.decide import Context
from streams.domain.notify import NotifyConfig
from streams.domain.routing import parse_routes
from streams.kafka import client as kafka_client
from streams.kafka.features import EMBEDDED_FETCH_WAIT_MS
from streams.kafka.topics import POLICY, SYNC_EVENTS
from streams.metrics import WorkerMetrics
from streams.settings import CommonSettings, WorkerSettings

if TYPE_CHECKING:
    from streams.replay import ReplayGuard


class _RawKeyJsonValues:
    """Keys as raw UTF-8, values as orjson, in the table and its changelog.

    Faust derives a table's serializers from ``key_type``/``value_type`` (``json`` for ``str``)
    and ignores the schema's; the policy topic is written by other tools with raw keys.
    """

    key_serializer: Any
    value_serializer: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_serializer = "raw"
        self.value_serializer = "orjson"


class DurableTable(faust.Table):
    """Per-app state: JSON objects held as their serialized bytes; the agent sends the changelog.

    Held serialized, not as Python objects: 10,000 apps of state are a few million objects
    that the cyclic garbage collector rescans on every full collection (0.1-0.4 s pauses every
    few seconds under load, seen as end-to-end p99 spikes), while bytes are never scanned and
    take a third of the memory. Recovery stores the changelog's bytes as they are, and each
    write serializes once, for the table and its changelog alike (the changelog's bytes are
    the same as before: compact JSON). Use :meth:`app_state`, :meth:`put_app_state` and
    :meth:`app_states`, not the mapping interface.

    Changelog writes do not go through Faust's producer: Faust buffers them and may commit the
    source offset before they reach the broker (a worker killed in that window loses the
    update; seen on the embedded broker), and its per-record path made them the slowest part of
    a batch. ``on_key_set`` (mode's hook for every write, which Faust's table implements by
    sending the changelog) queues each write instead; the agent takes them with
    :meth:`take_changelog`, sends them with its own producer once the batch's outputs are
    acknowledged, and reports the offsets with :meth:`changelog_acknowledged` before it lets
    the batch's source offsets be committed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Faust derives the serializers from key_type/value_type and ignores explicit ones.
        self.key_serializer = "raw"
        self.value_serializer = "raw"
        self._changelog: list[tuple[int, bytes, bytes]] = []

    def app_state(self, key: str) -> dict[str, Any] | None:
        """The state of app ``key``, or ``None`` when there is none (or it is not an object)."""
        return _state_of(self.get(key))

    def put_app_state(self, key: str, state: Mapping[str, Any]) -> None:
        """Replace the state of app ``key`` (in the changelog partition of the current event)."""
        self[key] = orjson.dumps(state)

    def app_states(self, containing: bytes = b"") -> Iterator[tuple[str, dict[str, Any]]]:
        """Every app's state on this worker (a snapshot; decoded as it goes).

        ``containing``: only states whose serialized form contains these bytes, a cheap
        pre-filter (callers still check the decoded state).
        """
        for key, raw in list(self.items()):
            if containing and (not isinstance(raw, bytes) or containing not in raw):
                continue
            state = _state_of(raw)
            if state is not None:
                yield key, state

    def raw_states(self, containing: bytes) -> list[bytes]:
        """A snapshot of the serialized states on this worker that contain ``containing`` (a
        pre-filter, as for :meth:`app_states`), to decode off the event loop with
        :func:`decoded_states`."""
        return [
            raw for _, raw in list(self.items()) if isinstance(raw, bytes) and containing in raw
        ]

    def on_key_set(self, key: Any, value: Any) -> None:
        """Queue a table write for the agent's producer (called before each write is stored).

        The partition is the current event's (``faust_fixes.as_current_event``).
        """
        partition = self.partition_for_key(key)
        if partition is None or not isinstance(value, bytes):
            raise RuntimeError("the apps table takes writes of serialized state inside the agent")
        self._changelog.append((partition, key.encode() if isinstance(key, str) else key, value))
        self.app.sensors.on_table_set(self, key, value)

    def on_key_del(self, key: Any) -> None:
        """Refused: app state is replaced, never deleted."""
        raise RuntimeError("the apps table takes writes of serialized state inside the agent")

    def take_changelog(self) -> list[tuple[str, int, bytes, bytes]]:
        """The ``(topic, partition, key, value)`` changelog records queued since the last call."""
        topic = self.changelog_topic.get_topic_name()
        pending, self._changelog = self._changelog, []
        return [(topic, partition, key, value) for partition, key, value in pending]

    def changelog_acknowledged(self, last_offsets: Mapping[tuple[str, int], int]) -> None:
        """Record the acknowledged changelog offsets in the store.

        What Faust's ``_on_changelog_sent`` does for the writes it sends itself: a RocksDB store
        keeps the offset, so that a restarted worker reads only the changelog's tail.
        """
        for (topic, partition), offset in last_offsets.items():
            self.data.set_persisted_offset(TP(topic, partition), offset)


def decoded_states(raws: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """The states of :meth:`DurableTable.raw_states`, decoded (undecodable ones skipped)."""
    for raw in raws:
        state = _state_of(raw)
        if state is not None:
            yield state


def _state_of(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        state = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return state if isinstance(state, dict) else None


class TopicBackedGlobalTable(
    _RawKeyJsonValues, faust_fixes.ChangelogNamedByItsTopic, faust.GlobalTable
):
    """A global table read from a topic of our own (``<prefix>policy``)."""


@dataclass
class Topology:
    """Everything the agents and views need, built from one ``WorkerSettings``."""

    settings: WorkerSettings
    app: faust_fixes.App
    sync_events: faust.TopicT
    apps: DurableTable
    policy: Any  # faust GlobalTable
    metrics: WorkerMetrics
    notify: NotifyConfig
    decide_context: Context
    #: with at_least_once: the outputs a replay must not write again (``streams.replay``)
    replay_guard: ReplayGuard | None = None

    def topic(self, name: str) -> str:
        """Full name of a synctrail topic."""
        return self.settings.topic(name)

    @functools.cached_property
    def event_source(self) -> str:
        """The ``ce_source`` of every output (``SYNCTRAIL_EVENT_SOURCE``)."""
        return self.settings.ce_source()

    def assigned_partitions(self) -> set[int]:
        """The sync-events partitions this worker owns right now."""
        name = self.sync_events.get_topic_name()
        return {tp.partition for tp in self.app.consumer.assignment() if tp.topic == name}

    def consumer_lag(self) -> dict[int, int]:
        """Records not yet processed per owned sync-events partition."""
        name = self.sync_events.get_topic_name()
        consumer = self.app.consumer
        lag = {}
        for partition in sorted(self.assigned_partitions()):
            tp = TP(name, partition)
            highwater = consumer.highwater(tp)
            position = faust_fixes.read_position(consumer, tp)
            if highwater is not None:
                lag[partition] = max(0, highwater - ((position + 1) if position is not None else 0))
        return lag


def declare(settings: WorkerSettings) -> Topology:
    """Create the Faust app with its topics and tables; ``streams.topology`` adds the agent,
    its timer and the web views."""
    app = _faust_app(settings)
    apps = _apps_table(app, settings)
    app.tables.add(apps)
    return Topology(
        settings=settings,
        app=app,
        sync_events=_sync_events_topic(app, settings),
        apps=apps,
        policy=app.tables.add(_policy_table(app, settings)),
        metrics=WorkerMetrics(),
        notify=NotifyConfig(
            default_channel=settings.slack_channel,
            violations_channel=settings.slack_violations_channel,
            routes=parse_routes(settings.slack_routes),
            argocd_url=settings.argocd_url,
            health=settings.notify_health,
        ),
        decide_context=Context(
            history_limit=settings.worker_history,
            dora_failure_window_s=settings.dora_failure_window,
            dora_history=settings.dora_history,
            event_source=settings.ce_source(),
            cdevents=settings.cdevents,
        ),
    )


def _advertised_host(settings: WorkerSettings) -> str:
    """The host peers forward query requests to: a wildcard bind advertises the host name."""
    return settings.worker_advertised_host or (
        socket.gethostname()
        if settings.worker_web_host in ("0.0.0.0", "::")
        else settings.worker_web_host
    )


def _faust_app(settings: WorkerSettings) -> faust_fixes.App:
    return faust_fixes.App(
        settings.worker_id,
        broker=faust_broker(settings),
        broker_credentials=faust_credentials(settings),
        client_args=kafka_client.client_args(settings),
        store=settings.worker_store,
        datadir=str(settings.worker_data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        # never Faust's exactly_once (broken upstream): see faust_fixes fix 4
        processing_guarantee="at_least_once",
        transactional_outputs=settings.processing_guarantee == "exactly_once",
        producer_acks=-1,
        producer_max_batch_size=settings.kafka_producer_max_batch_bytes,
        broker_session_timeout=settings.broker_session_timeout_s,
        broker_commit_interval=settings.worker_commit_interval_s,
        broker_rebalance_timeout=settings.broker_rebalance_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.broker_session_timeout_s / 3),
        consumer_auto_offset_reset="earliest",
        web_enabled=True,
        web_bind=settings.worker_web_host,
        web_host=settings.worker_web_host,
        web_port=settings.worker_web_port,
        canonical_url=f"http://{_advertised_host(settings)}:{settings.worker_web_port}",
        web_tables_enabled=False,
        table_standby_replicas=0,
        logging_config=None,
        loghandlers=[],
        fetch_max_wait_ms=settings.worker_fetch_max_wait_ms or EMBEDDED_FETCH_WAIT_MS,
    )


def faust_broker(settings: CommonSettings) -> list[str]:
    """Faust's ``broker=`` URLs."""
    return [f"kafka://{host}" for host in kafka_client.bootstrap_servers(settings)]


def faust_credentials(settings: CommonSettings) -> Any:
    """Faust's ``broker_credentials=``: its aiokafka driver gives them to the worker's
    consumer, every producer and the client that creates topics (None for PLAINTEXT)."""
    protocol = settings.kafka_security_protocol
    context = kafka_client.ssl_context(settings)
    if protocol.startswith("SASL_"):
        # with an ssl_context Faust makes it SASL_SSL, without one SASL_PLAINTEXT
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_secret(),
            ssl_context=context,
            mechanism=settings.kafka_sasl_mechanism,
        )
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return None


def _sync_events_topic(app: faust.App, settings: WorkerSettings) -> faust.TopicT:
    return app.topic(
        settings.topic(SYNC_EVENTS.name),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )


def _apps_table(app: faust.App, settings: WorkerSettings) -> DurableTable:
    return DurableTable(
        app,
        name="apps",
        key_type=str,
        partitions=settings.partitions,
        default=None,
        beacon=app.tables.beacon,
        help="Per-app state: resources, running images, last operation, recent deploys.",
    )


def _policy_table(app: faust.App, settings: WorkerSettings) -> TopicBackedGlobalTable:
    # the policy topic: keys are raw UTF-8 rule ids, values JSON objects (written by other tools)
    schema: faust.Schema = faust.Schema(
        key_type=str, value_type=None, key_serializer="raw", value_serializer="orjson"
    )
    return TopicBackedGlobalTable(
        app,
        name="policy",
        key_type=str,
        partitions=settings.partitions,
        changelog_topic=app.topic(
            settings.topic(POLICY.name),
            schema=schema,
            partitions=settings.partitions,
            compacting=True,
        ),
        is_global=True,
        beacon=app.tables.beacon,
        standby_buffer_size=1,  # apply rule changes as they arrive
        help="Policy rules by id, from the compacted policy topic.",
    )
