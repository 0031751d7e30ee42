"""Faust and aiokafka at arm's length: the exact versions, and the source of every upstream
method synctrail overrides or reaches into, as it was when the overrides were written.

An upgrade that changes one of them fails here, naming what to re-check, instead of changing
synctrail's behaviour silently. After re-checking (and adapting the override), record the new
fingerprint shown in the failure.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiokafka
import aiokafka.client
import faust
import faust.streams
import pytest
from aiokafka.producer.sender import Sender
from faust.assignor.partition_assignor import PartitionAssignor
from faust.tables.base import Collection
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.tables.table import Table
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.utils.collections import ManagedUserDict

VERSIONS = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}

# (upstream object, its fingerprint, what in synctrail depends on it)
UPSTREAM: dict[str, tuple[Callable[[], Any], str, str]] = {
    "Recovery.on_recovery_completed": (
        lambda: Recovery.on_recovery_completed,
        "6ef567acf072e46d",
        "streams/faust_fixes.py _SeekThenResumeRecovery copies it with the seek moved (fix 1)",
    ),
    "TableManager.on_start": (
        lambda: TableManager.on_start,
        "365dd25fbc0e0684",
        "streams/faust_fixes.py TableManager.on_start drops its one-second nap",
    ),
    "TableManager.recovery": (
        lambda: TableManager.recovery.fget,
        "f0bf5de78b4c3d23",
        "streams/faust_fixes.py TableManager.recovery builds our Recovery",
    ),
    "AIOKafkaConsumerThread._create_worker_consumer": (
        lambda: faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer,
        "c2701bfc3e6f6cad",
        "faust_fixes sets the fetch wait and read_committed on the consumer it builds",
    ),
    "AIOKafkaConsumerThread.getmany": (
        lambda: faust_aiokafka.AIOKafkaConsumerThread.getmany,
        "26fc5fc9f3b667e1",
        "faust_fixes hands it a snapshot of the active partitions (fix 1)",
    ),
    "AIOKafkaConsumerThread._highwaters": (
        lambda: faust_aiokafka.AIOKafkaConsumerThread._highwaters,
        "a7f4f97d9f32aca2",
        "faust_fixes answers with the true (or committed) end offsets (fixes 2 and 4)",
    ),
    "AIOKafkaConsumerThread._commit": (
        lambda: faust_aiokafka.AIOKafkaConsumerThread._commit,
        "932852ce7a23f658",
        "faust_fixes skips Faust's plain commits under exactly_once (fix 4)",
    ),
    "Consumer._new_consumer_thread": (
        lambda: faust_aiokafka.Consumer._new_consumer_thread,
        "0870ec53dea75083",
        "faust_fixes puts our consumer thread in its place",
    ),
    "App._new_transport": (
        lambda: faust.App._new_transport,
        "42db531312dd776f",
        "faust_fixes.App gives Faust our transport",
    ),
    "App._on_partitions_assigned": (
        lambda: faust.App._on_partitions_assigned,
        "de932b7927db85b3",
        "faust_fixes.App runs before_assignment hooks first (transactional producers fence)",
    ),
    "Table.on_key_set": (
        lambda: Table.on_key_set,
        "a370e35ca55c2c7e",
        "streams/app.py DurableTable.on_key_set replaces it (queues the changelog write for the "
        "agent's producer): anything new Faust does on a table write must be done there too",
    ),
    "Table.on_key_del": (
        lambda: Table.on_key_del,
        "4f2900b2f9d24a08",
        "streams/app.py DurableTable.on_key_del replaces it (refuses deletes)",
    ),
    "ManagedUserDict.__setitem__": (
        lambda: ManagedUserDict.__setitem__,
        "f3bdf602abc08dd1",
        "streams/app.py DurableTable: a table write must still call on_key_set before storing",
    ),
    "Collection.partition_for_key": (
        lambda: Collection.partition_for_key,
        "3b2291811b8dd791",
        "DurableTable.on_key_set takes the write's partition from it (the current event's)",
    ),
    "faust.streams.current_event": (
        lambda: faust.streams.current_event,
        "3b821f1a78d86a58",
        "streams/faust_fixes.py as_current_event sets the context variable it reads "
        "(a weak reference to the event)",
    ),
    "Collection._changelog_topic_name": (
        lambda: Collection._changelog_topic_name,
        "f341fe97037b4ac8",
        "streams/faust_fixes.py ChangelogNamedByItsTopic overrides it for the policy table",
    ),
    "PartitionAssignor._global_table_standby_assignments": (
        lambda: PartitionAssignor._global_table_standby_assignments,
        "b956f05703d92ce5",
        "streams/faust_fixes.py ChangelogNamedByItsTopic: is the changelog still looked up by "
        "_changelog_topic_name() rather than changelog_topic? (if not, drop the override)",
    ),
    "Consumer._drain_messages": (
        lambda: FaustConsumer._drain_messages,
        "44a2500309e83c63",
        "streams/faust_fixes.py read_position reads Consumer._read_offset, set here for each "
        "record handed to the stream (the lag gauge)",
    ),
    "Consumer.perform_seek": (
        lambda: FaustConsumer.perform_seek,
        "0e8c130ff4b0afd8",
        "streams/faust_fixes.py read_position: _read_offset after the seek to committed offsets",
    ),
    "AIOKafkaConsumer.start": (
        lambda: aiokafka.AIOKafkaConsumer.start,
        "2f1ba70443327538",
        "faust_fixes sets _fetch_max_wait_ms and _isolation_level that start() reads",
    ),
    "AIOKafkaClient.force_metadata_update": (
        lambda: aiokafka.client.AIOKafkaClient.force_metadata_update,
        "cb7befef21c8f3f9",
        "streams/kafka/aiokafka_fixes.py refresh_metadata calls it through the consumer's _client",
    ),
    "AIOKafkaProducer.stop": (
        lambda: aiokafka.AIOKafkaProducer.stop,
        "43ef97147111893b",
        "streams/kafka/aiokafka_fixes.py abort_sender closes _sender before stop(), so that "
        "stop() drops the queued batches instead of waiting for them (the bridge's _retire)",
    ),
    "Sender.close": (
        lambda: Sender.close,
        "f60b3d023d2526f4",
        "streams/kafka/aiokafka_fixes.py abort_sender: close() must cancel the sender task",
    ),
}


def fingerprint(obj: Any) -> str:
    """The first 16 hex digits of the sha256 of ``obj``'s source."""
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


@pytest.mark.parametrize("package", sorted(VERSIONS))
def test_the_pinned_versions_are_the_ones_installed(package: str) -> None:
    assert importlib.metadata.version(package) == VERSIONS[package], (
        f"{package} is not the version the overrides were written against: re-check every "
        "entry of UPSTREAM in this file, then update the pin in pyproject.toml and here"
    )


@pytest.mark.parametrize("name", sorted(UPSTREAM))
def test_upstream_source_is_what_the_overrides_were_written_against(name: str) -> None:
    get, expected, dependant = UPSTREAM[name]
    actual = fingerprint(get())
    assert actual == expected, (
        f"upstream {name} changed ({expected} -> {actual}): re-check {dependant}, "
        "then record the new fingerprint (and update docs/upgrading.md)"
    )


def test_the_private_names_synctrail_reaches_for_exist() -> None:
    # streams/faust_fixes.py as_current_event: the ContextVar current_event() reads
    assert type(faust.streams._current_event).__name__ == "ContextVar"
    # streams/faust_fixes.py read_position
    assert "self._read_offset = defaultdict(" in inspect.getsource(FaustConsumer.__init__)
    # streams/faust_fixes.py _ConsumerThread._create_worker_consumer sets these for start()
    assert "_fetch_max_wait_ms" in inspect.getsource(aiokafka.AIOKafkaConsumer.start)
    assert "_isolation_level" in inspect.getsource(aiokafka.AIOKafkaConsumer.start)
    # streams/faust_fixes.py _SeekThenResumeRecovery (copied from Faust's own)
    assert "._fetcher.maybe_start()" in inspect.getsource(Recovery.on_recovery_completed)
    # streams/kafka/aiokafka_fixes.py
    assert "self._client = AIOKafkaClient(" in inspect.getsource(aiokafka.AIOKafkaConsumer)
    assert "self._sender = Sender(" in inspect.getsource(aiokafka.AIOKafkaProducer.__init__)


def test_every_upstream_name_is_in_the_upgrade_notes() -> None:
    notes = (Path(__file__).parents[2] / "docs" / "upgrading.md").read_text()
    missing = [name for name in UPSTREAM if f"`{name}`" not in notes]
    assert not missing, f"docs/upgrading.md does not list {missing}"
