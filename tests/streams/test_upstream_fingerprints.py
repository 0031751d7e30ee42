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
from typing import Any

import aiokafka
import aiokafka.client
import faust
import faust.streams
import pytest
from faust.tables.base import Collection
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka

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
    "Collection.send_changelog": (
        lambda: Collection.send_changelog,
        "3dd3884e1b5fc0e1",
        "streams/app.py DurableTable queues changelog writes for the agent's producer",
    ),
    "Collection._changelog_topic_name": (
        lambda: Collection._changelog_topic_name,
        "f341fe97037b4ac8",
        "streams/app.py TopicBackedGlobalTable answers with the policy topic's real name",
    ),
    "Consumer.track_message": (
        lambda: FaustConsumer.track_message,
        "217d7f1399a4cd8e",
        "streams/app.py reads Consumer._read_offset for the lag gauge",
    ),
    "AIOKafkaConsumer.start": (
        lambda: aiokafka.AIOKafkaConsumer.start,
        "2f1ba70443327538",
        "faust_fixes sets _fetch_max_wait_ms and _isolation_level that start() reads",
    ),
    "AIOKafkaClient.force_metadata_update": (
        lambda: aiokafka.client.AIOKafkaClient.force_metadata_update,
        "cb7befef21c8f3f9",
        "streams/kafka/offsets.py calls it through the consumer's _client",
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
        "then record the new fingerprint"
    )


def test_the_private_names_synctrail_reaches_for_exist() -> None:
    # a ContextVar the agent sets for table writes (streams/agents.py _current_event)
    assert type(faust.streams._current_event).__name__ == "ContextVar"
    assert "_read_offset" in inspect.getsource(FaustConsumer.__init__)
    assert "_fetch_max_wait_ms" in inspect.getsource(aiokafka.AIOKafkaConsumer.start)
    assert "_isolation_level" in inspect.getsource(aiokafka.AIOKafkaConsumer.start)
