"""replay-dead-letters: which dead letters go back where, and the command on the real broker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from connectors.dead_letters import decide, summary
from streams.domain import cloudevents
from streams.domain.records import DEAD_LETTER_V1, SYNC_EVENT_V1
from streams.kafka.offsets import read_to_end
from tests.support import REPO, produce, read_topic

PREFIX = "synctrail."


def dead_letter(source_topic: str | None, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "schema": DEAD_LETTER_V1,
        "component": "worker",
        "reason": "KeyError: 'resources'",
        "error_type": "KeyError",
        "source_topic": source_topic,
        "source_partition": 3,
        "source_offset": 41,
        "key": "argocd/guestbook",
        "original": None,
        "original_text": None,
        "failed_at": "2026-11-27T10:00:00Z",
    }
    record.update(fields)
    return record


def test_a_json_original_goes_back_to_its_source_topic_with_its_key():
    original = {"schema": "synctrail.sync-event/v1", "delivery_id": "d1", "app": {"name": "g"}}
    decision = decide(dead_letter("synctrail.sync-events", original=original), PREFIX)
    assert decision.send
    assert decision.topic == "synctrail.sync-events"
    assert decision.key == b"argocd/guestbook"
    assert decision.value is not None and orjson.loads(decision.value) == original


def test_an_original_that_was_not_json_is_sent_as_its_text():
    decision = decide(
        dead_letter("synctrail.notifications", original_text="{broken", key=None), PREFIX
    )
    assert decision.send and decision.value == b"{broken" and decision.key is None


def test_dead_letters_that_cannot_be_replayed_are_skipped_with_a_reason():
    cases = {
        "foreign_topic": dead_letter("someone-elses-topic", original={"a": 1}),
        "no_source_topic": dead_letter(None, original={"a": 1}),
        "no_original": dead_letter("synctrail.sync-events"),
        "not_a_dead_letter": {"schema": "synctrail.metric/v1"},
    }
    for outcome, record in cases.items():
        decision = decide(record, PREFIX)
        assert not decision.send and decision.outcome == outcome, outcome
    # Never loop a dead letter back into the dead-letter topic.
    looped = decide(dead_letter("synctrail.dead-letters", original={"a": 1}), PREFIX)
    assert looped.outcome == "foreign_topic"
    # Nor into cdevents, which no synctrail component reads (so none dead-letters from it).
    cdevent = decide(dead_letter("synctrail.cdevents", original={"context": {}}), PREFIX)
    assert cdevent.outcome == "foreign_topic"


def test_summary_counts_sent_and_skipped_by_reason():
    from collections import Counter

    line = summary(Counter({"sent": 2, "no_original": 1, "foreign_topic": 3}), dry_run=False)
    assert line == "replayed 2 dead letter(s), skipped 4 (foreign_topic 3, no_original 1)"
    assert "would replay 1" in summary(Counter({"would_send": 1}), dry_run=True)


async def raw_records(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) on ``topic`` as bytes (read_topic insists on JSON values)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        out: list[tuple[bytes | None, bytes | None]] = []
        for tp in tps:
            async for batch in read_to_end(consumer, [tp], fetch_ms=1000):
                out.extend((m.key, m.value) for m in batch)
        return out
    finally:
        await consumer.stop()


async def run_command(bootstrap: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SYNCTRAIL_KAFKA_BOOTSTRAP": bootstrap,
        "SYNCTRAIL_TOPIC_PREFIX": prefix,
        "SYNCTRAIL_DEAD_LETTER_REPLAY_GROUP": f"{prefix}replay",
    }
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "connectors.cli", "replay-dead-letters", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_replay_dead_letters_sends_originals_back_once(broker, topics):
    prefix = topics
    event = {"schema": "synctrail.sync-event/v1", "delivery_id": "d1", "revision": "abc"}
    letters = [
        dead_letter(f"{prefix}sync-events", original=event),
        dead_letter(f"{prefix}notifications", original_text="not json", key="argocd/api"),
        dead_letter("elsewhere", original={"x": 1}),
        dead_letter(f"{prefix}sync-events"),
    ]
    await produce(
        broker.bootstrap,
        f"{prefix}dead-letters",
        [(b"argocd/guestbook", orjson.dumps(letter)) for letter in letters],
    )

    dry = await run_command(broker.bootstrap, prefix, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("would send") == 2
    assert "would replay 2 dead letter(s), skipped 2" in dry.stdout
    assert await read_topic(broker.bootstrap, f"{prefix}sync-events") == []

    done = await run_command(broker.bootstrap, prefix)
    assert done.returncode == 0, done.stderr
    assert "replayed 2 dead letter(s), skipped 2 (foreign_topic 1, no_original 1)" in done.stdout
    synced = await read_topic(broker.bootstrap, f"{prefix}sync-events")
    assert [(r.key, r.value) for r in synced] == [("argocd/guestbook", event)]
    assert await raw_records(broker.bootstrap, f"{prefix}notifications") == [
        (b"argocd/api", b"not json")
    ]

    # Progress was committed: a second run has nothing new; --from-beginning replays again.
    again = await run_command(broker.bootstrap, prefix)
    assert "replayed 0 dead letter(s), skipped 0" in again.stdout, again.stdout
    everything = await run_command(broker.bootstrap, prefix, "--from-beginning")
    assert "replayed 2 dead letter(s)" in everything.stdout
    replayed = await read_topic(broker.bootstrap, f"{prefix}sync-events")
    assert len(replayed) == 2
    # the same fact replayed twice has one ce_id: the one its first writer (the bridge) gave it
    source = f"/synctrail/{prefix.rstrip('.')}"
    first = dict(cloudevents.headers(SYNC_EVENT_V1, event, "argocd/guestbook", source))
    assert [dict(r.headers)["ce_id"] for r in replayed] == [first["ce_id"]] * 2
    assert dict(replayed[0].headers) == first


async def test_replay_dead_letters_fails_clearly_when_the_topic_is_missing(broker, prefix):
    result = await run_command(broker.bootstrap, prefix)
    assert result.returncode == 1
    assert f"topic {prefix}dead-letters does not exist" in result.stderr
