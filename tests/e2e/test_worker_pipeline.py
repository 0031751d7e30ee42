"""The worker on the real embedded broker: the fixture oracle, crashes, scale-out, policy, poison."""

from __future__ import annotations

import asyncio
import collections
import os
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.domain.records import METRIC_V1
from streams.kafka.setup import ensure_topics
from tests.contracts import validate_record
from tests.e2e.harness import (
    FixtureEvent,
    derived_view,
    expected_view,
    fixture_events,
    synthetic_events,
)
from tests.support import (
    REPO,
    produce,
    read_topic,
    wait_for,
    wait_for_log_record,
    wait_for_records,
)


def _announced(events: list[FixtureEvent]) -> list[FixtureEvent]:
    return [e for e in events if not e.expected.get("duplicateOf")]


async def _produce_events(bootstrap: str, prefix: str, events: list[FixtureEvent]) -> None:
    await produce(bootstrap, f"{prefix}sync-events", [(e.key.encode(), e.raw) for e in events])


def _by_app(records: list[Any]) -> dict[str, list[dict[str, Any]]]:
    per_app: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        per_app[record.key].append(record.value)
    return per_app


def _distinct(sequence: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop byte-identical repeats of a delivery (allowed by at-least-once), keep order."""
    seen: dict[str, dict[str, Any]] = {}
    out = []
    for value in sequence:
        previous = seen.get(value["delivery_id"])
        if previous is not None:
            assert previous == value, "a repeated delivery must repeat the same record"
            continue
        seen[value["delivery_id"]] = value
        out.append(value)
    return out


def _assert_continuity(per_app: dict[str, list[dict[str, Any]]]) -> None:
    """Each deploy's previous_revision is the revision of the app's last successful deploy."""
    for app, sequence in per_app.items():
        last_success = None
        for deployment in sequence:
            assert deployment["previous_revision"] == last_success, app
            if deployment["operation"]["phase"] == "Succeeded":
                last_success = deployment["revision"]


async def _committed_to_end(bootstrap: str, group: str, topic: str) -> bool:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        end = await consumer.end_offsets(tps)
        for tp in tps:
            committed = await consumer.committed(tp)
            if end[tp] and (committed or 0) < end[tp]:
                return False
        return True
    finally:
        await consumer.stop()


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
async def test_fixture_sequence_matches_the_oracle(broker, topics, start_worker, store):
    events = list(fixture_events())
    worker = start_worker(SYNCTRAIL_WORKER_STORE=store)
    await worker.wait_ready()
    await _produce_events(broker.bootstrap, topics, events)

    announced = _announced(events)
    records = await wait_for_records(broker.bootstrap, f"{topics}deployments", len(announced))
    by_delivery = {r.value["delivery_id"]: r for r in records}
    assert len(by_delivery) == len(announced)
    for event in events:
        record = by_delivery.get(event.event["delivery_id"])
        if event.expected.get("duplicateOf"):
            assert record is None, f"{event.file} is a duplicate and must not be announced"
            continue
        assert record is not None, f"no deployment for {event.file}"
        assert record.key == event.key
        validate_record(record.value)
        assert derived_view(record.value) == expected_view(event.expected), event.file

    metrics = await wait_for_records(broker.bootstrap, f"{topics}metrics", len(events))
    kinds = collections.Counter(m.value["kind"] for m in metrics)
    assert kinds["duplicate"] == 1 and kinds["deployment"] == len(announced)
    notifications = await wait_for_records(
        broker.bootstrap, f"{topics}notifications", len(announced)
    )
    for note in notifications:
        validate_record(note.value)
    for metric in metrics:
        validate_record(metric.value)
    assert len({n.value["idempotency_key"] for n in notifications}) == len(announced)


async def test_replaying_the_fixtures_announces_only_bare_bodies_other_than_the_apps_last(
    broker, topics, start_worker
):
    # What the README tells a user who replays the examples twice.
    first, second = list(fixture_events()), list(fixture_events())
    worker = start_worker()
    await worker.wait_ready()
    await _produce_events(broker.bootstrap, topics, first + second)

    replayed = {e.event["delivery_id"]: e for e in second}

    async def verdicts() -> dict[str, str] | None:
        metrics = await read_topic(broker.bootstrap, f"{topics}metrics")
        found = {
            m.value["delivery_id"]: m.value["kind"]
            for m in metrics
            if m.value.get("delivery_id") in replayed
            and m.value["schema"] == METRIC_V1  # not a DORA finding it brought
            and m.value["kind"] != "violation"
        }
        return found if len(found) == len(replayed) else None

    kinds = await wait_for(verdicts, timeout=60, what="a verdict on every replayed event")
    announced = {replayed[d].file for d, kind in kinds.items() if kind == "deployment"}
    assert announced == {"02-payments-api-rev-a.json", "06-payments-api-rev-b.json"}
    assert set(kinds.values()) == {"deployment", "duplicate", "stale"}

    # A verdict on the metrics topic does not mean its deployment record is on its own topic
    # yet (the two are acknowledged separately): wait for the first pass's and these two.
    expected = len(_announced(first)) + len(announced)
    deployments = await wait_for_records(broker.bootstrap, f"{topics}deployments", expected)
    assert len(deployments) == expected
    again = [d.value for d in deployments if d.value["delivery_id"] in replayed]
    assert [replayed[d["delivery_id"]].file for d in again] == sorted(announced)
    assert all(d["rollback"] for d in again)


async def test_query_api_answers_for_apps_and_images(broker, topics, start_worker):
    events = list(fixture_events())
    worker = start_worker()
    await worker.wait_ready()
    await _produce_events(broker.bootstrap, topics, events)
    await wait_for_records(broker.bootstrap, f"{topics}deployments", len(_announced(events)))

    status, body = await worker.get("/apps/argocd/guestbook")
    assert status == 200
    assert body["images"] == [
        "docker.io/envoyproxy/envoy:v1.30.1",
        "ghcr.io/acme/guestbook-ui:v1.5.0",
    ]
    assert body["deploys"][0]["phase"] == "Failed"
    status, short = await worker.get("/apps/guestbook")
    assert status == 200 and short["revision"] == body["revision"]
    status, missing = await worker.get("/apps/argocd/no-such-app")
    assert status == 404 and "no-such-app" in missing["error"]
    status, images = await worker.get("/images", ref="ghcr.io/acme/guestbook-ui:v1.5.0")
    assert status == 200 and images["apps"] == ["argocd/guestbook"]
    status, redis = await worker.get("/images", ref="redis:7.2.4")
    assert status == 200 and redis == {"image": "docker.io/library/redis:7.2.4", "apps": []}
    status, bad = await worker.get("/images", ref="bad ref with spaces")
    assert status == 400 and "bad ref with spaces" in bad["error"]


@pytest.mark.parametrize("loop_name", ["uvloop", "asyncio"])
async def test_worker_runs_on_the_configured_event_loop(start_worker, loop_name):
    worker = start_worker(SYNCTRAIL_WORKER_EVENT_LOOP=loop_name)
    await worker.wait_ready()
    frozen = await wait_for_log_record(worker, "heap frozen")
    assert frozen["event_loop"] == loop_name


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
async def test_state_survives_a_kill_right_after_the_offset_commit(
    broker, topics, start_worker, worker_env, store, tmp_path
):
    events = list(fixture_events())
    first, rest = events[:3], events[3:]  # 01, 02, 03; 04 is 03 again
    # one data dir for both runs: a RocksDB store reads only the changelog after the offsets
    # it recorded, so those must be right
    env = {"SYNCTRAIL_WORKER_STORE": store, "SYNCTRAIL_WORKER_DATA_DIR": str(tmp_path / "data")}
    worker = start_worker(**env)
    await worker.wait_ready()
    await _produce_events(broker.bootstrap, topics, first)
    await wait_for_records(broker.bootstrap, f"{topics}deployments", 3)
    await wait_for(
        lambda: _committed_to_end(
            broker.bootstrap, worker_env["SYNCTRAIL_WORKER_ID"], f"{topics}sync-events"
        ),
        timeout=30,
        what="the worker to commit its offsets",
    )
    worker.kill()
    if store == "rocksdb://":
        # each partition's store recorded the offset of its last acknowledged changelog write
        changelog = await read_topic(
            broker.bootstrap, f"{worker_env['SYNCTRAIL_WORKER_ID']}-apps-changelog"
        )
        last = {r.partition: r.offset for r in changelog}  # sorted by partition and offset
        assert last and _rocksdb_persisted_offsets(tmp_path / "data") == last

    restarted = start_worker(**env)
    await restarted.wait_ready()
    await _produce_events(broker.bootstrap, topics, rest)
    announced = _announced(events)
    records = await wait_for_records(broker.bootstrap, f"{topics}deployments", len(announced))
    per_app = _by_app(records)
    delivered = [v["delivery_id"] for seq in per_app.values() for v in seq]
    assert len(delivered) == len(set(delivered)) == len(announced)
    # 04 (a re-delivery of 03) found 03's state after the kill: no announcement
    assert not any(d.startswith("04-") for d in delivered)
    _assert_continuity(per_app)


def _rocksdb_persisted_offsets(data_dir: Path) -> dict[int, int]:
    """The changelog offset each ``apps`` partition store recorded (Faust's offset key)."""
    from rocksdict import AccessType, Options, Rdict

    offsets: dict[int, int] = {}
    for path in data_dir.rglob("apps-*.db"):
        db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            offset = db.get(b"__faust\0offset__")
        finally:
            db.close()
        if offset is not None:
            offsets[int(path.name.removeprefix("apps-").removesuffix(".db"))] = int(offset)
    return offsets


async def test_worker_killed_mid_sequence_loses_nothing_and_keeps_continuity(
    broker, topics, start_worker
):
    events = list(fixture_events())
    worker = start_worker()
    await worker.wait_ready()
    await _produce_events(broker.bootstrap, topics, events[:7])
    await wait_for_records(broker.bootstrap, f"{topics}deployments", 6)
    worker.kill()  # no grace: whatever was in flight is replayed

    restarted = start_worker()
    await restarted.wait_ready()
    await _produce_events(broker.bootstrap, topics, events[7:])
    announced = _announced(events)

    async def all_announced() -> list[Any] | None:
        records = await read_topic(broker.bootstrap, f"{topics}deployments")
        ids = {r.value["delivery_id"] for r in records}
        return records if len(ids) >= len(announced) else None

    records = await wait_for(all_announced, timeout=60, interval=0.3, what="every deployment")
    per_app = {app: _distinct(seq) for app, seq in _by_app(records).items()}
    expected_per_app: dict[str, list[str]] = collections.defaultdict(list)
    for event in announced:
        expected_per_app[event.key].append(event.event["delivery_id"])
    assert {
        app: [d["delivery_id"] for d in seq] for app, seq in per_app.items()
    } == expected_per_app
    _assert_continuity(per_app)


async def test_worker_started_on_a_backlog_announces_every_delivery_once(
    broker, topics, start_worker
):
    """Thousands of records waiting for a worker that restarts with state: none lost or doubled.

    The state changelog and the outputs are written in multi-record batches, so the restart
    also proves that table recovery reads to the true end of every changelog partition.
    """
    apps, deploys = 200, 12
    events = synthetic_events(apps=apps, deploys=deploys)
    first_round, backlog = events[:apps], events[apps:]
    worker = start_worker()
    await worker.wait_ready()
    await produce(
        broker.bootstrap,
        f"{topics}sync-events",
        [(e.key.encode(), e.raw) for e in first_round],
        batched=True,
    )
    await wait_for_records(broker.bootstrap, f"{topics}deployments", apps)
    assert worker.stop() == 0

    await produce(
        broker.bootstrap,
        f"{topics}sync-events",
        [(e.key.encode(), e.raw) for e in backlog],
        batched=True,
    )
    restarted = start_worker()
    await restarted.wait_ready()

    async def all_announced() -> list[Any] | None:
        records = await read_topic(broker.bootstrap, f"{topics}deployments")
        return records if len({r.value["delivery_id"] for r in records}) >= len(events) else None

    records = await wait_for(all_announced, timeout=120, interval=0.5, what="every deployment")
    per_app = {app: _distinct(seq) for app, seq in _by_app(records).items()}
    expected: dict[str, list[str]] = collections.defaultdict(list)
    for event in events:
        expected[event.key].append(event.event["delivery_id"])
    assert {app: [d["delivery_id"] for d in seq] for app, seq in per_app.items()} == expected
    _assert_continuity(per_app)
    assert all(
        deployment["initial"] == (index == 0)
        for sequence in per_app.values()
        for index, deployment in enumerate(sequence)
    )


async def test_two_workers_produce_what_one_worker_produces(
    broker, topics, start_worker, worker_env
):
    events = list(synthetic_events(apps=24, deploys=4))
    single_prefix, shared_prefix = topics, f"{topics}two."
    await ensure_topics(broker.bootstrap, shared_prefix, partitions=8)

    solo = start_worker()
    await solo.wait_ready()
    await _produce_events(broker.bootstrap, single_prefix, events)
    solo_records = await wait_for_records(
        broker.bootstrap, f"{single_prefix}deployments", len(events)
    )

    group = worker_env["SYNCTRAIL_WORKER_ID"] + "-pair"
    first = start_worker(SYNCTRAIL_TOPIC_PREFIX=shared_prefix, SYNCTRAIL_WORKER_ID=group)
    await first.wait_ready()
    third = len(events) // 3
    await _produce_events(broker.bootstrap, shared_prefix, events[:third])
    second = start_worker(SYNCTRAIL_TOPIC_PREFIX=shared_prefix, SYNCTRAIL_WORKER_ID=group)
    await _produce_events(broker.bootstrap, shared_prefix, events[third : 2 * third])  # joining
    await second.wait_ready()
    await _produce_events(broker.bootstrap, shared_prefix, events[2 * third :])

    async def all_there() -> list[Any] | None:
        records = await read_topic(broker.bootstrap, f"{shared_prefix}deployments")
        return records if len({r.value["delivery_id"] for r in records}) >= len(events) else None

    pair_records = await wait_for(all_there, timeout=90, interval=0.3, what="pair output")
    solo_by_app = {app: _distinct(seq) for app, seq in _by_app(solo_records).items()}
    pair_by_app = {app: _distinct(seq) for app, seq in _by_app(pair_records).items()}
    assert pair_by_app.keys() == solo_by_app.keys()
    for app, sequence in solo_by_app.items():
        for solo_record, pair_record in zip(sequence, pair_by_app[app], strict=True):
            differing = {k for k in solo_record if solo_record[k] != pair_record.get(k)}
            assert not differing, (
                app,
                solo_record["delivery_id"],
                {
                    k: (solo_record[k], pair_record.get(k))
                    for k in differing
                    if k in ("initial", "previous_revision", "images")
                },
            )

    async def second_took_part() -> float | None:
        # counted once its outputs are acknowledged: a moment after a reader can see them
        return await second.metric("synctrail_worker_events_total", outcome="deployed")

    await wait_for(
        second_took_part, timeout=30, what="the second worker taking over some partitions"
    )


async def test_deny_rule_added_at_runtime_flags_running_apps(
    broker, topics, start_worker, worker_env
):
    events = [e for e in fixture_events() if e.key == "argocd/guestbook"][:4]  # 01, 03, 04, 07
    worker = start_worker()
    await worker.wait_ready()
    await _produce_events(broker.bootstrap, topics, events)
    await wait_for_records(broker.bootstrap, f"{topics}deployments", 3)

    policy = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "connectors.cli",
        "policy",
        "deny",
        "envoyproxy/envoy:v1.30.*",
        "--reason",
        "CVE-2026-0001 in envoy 1.30",
        env={**os.environ, **worker_env},
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(policy.communicate(), 60)
    assert policy.returncode == 0, err.decode()
    assert b"published rule" in out

    violations = await wait_for_records(broker.bootstrap, f"{topics}violations", 1, timeout=20)
    assert [(v.key, v.value["image"], v.value["detected"]) for v in violations] == [
        ("argocd/guestbook", "docker.io/envoyproxy/envoy:v1.30.1", "retroactive")
    ]
    validate_record(violations[0].value)
    remediations = await wait_for_records(broker.bootstrap, f"{topics}remediations", 1)
    rev_b = events[1].event["revision"]
    assert remediations[0].value["known_good_revision"] == rev_b
    validate_record(remediations[0].value)
    notes = await read_topic(broker.bootstrap, f"{topics}notifications")
    assert [n.value["kind"] for n in notes].count("violation") == 1
    status, app = await worker.get("/apps/guestbook")
    assert status == 200 and app["violations"]


async def test_poison_records_go_to_dead_letters_and_the_next_is_processed(
    broker, topics, start_worker
):
    good = next(fixture_events())
    worker = start_worker()
    await worker.wait_ready()
    not_json = b"\x00\x01 definitely not json"
    wrong_schema = orjson.dumps({"schema": "something/v9", "app": {"name": "x", "namespace": "y"}})
    await produce(
        broker.bootstrap,
        f"{topics}sync-events",
        [
            (good.key.encode(), not_json),
            (good.key.encode(), wrong_schema),
            (good.key.encode(), good.raw),
        ],
    )
    dead = await wait_for_records(broker.bootstrap, f"{topics}dead-letters", 2)
    reasons = [d.value["reason"] for d in sorted(dead, key=lambda r: r.offset)]
    assert "schema" in reasons[1]
    assert dead[0].value["original_text"] is not None or dead[1].value["original_text"] is not None
    for record in dead:
        validate_record(record.value)
        assert record.value["source_topic"] == f"{topics}sync-events"
    deployments = await wait_for_records(broker.bootstrap, f"{topics}deployments", 1)
    assert deployments[0].value["delivery_id"] == good.event["delivery_id"]
    dead_lettered = await wait_for(
        lambda: worker.metric("synctrail_worker_events_total", outcome="dead_lettered"),
        what="the dead-letter count on /metrics",
    )
    assert dead_lettered == 2


async def test_policy_file_rules_apply_to_new_deploys_and_survive_a_restart(
    broker, topics, start_worker, tmp_path
):
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "deny:\n"
        "  - image: redis:7.2.4\n"
        "    reason: CVE-2026-7777 in redis 7.2.4\n"
        "allow:\n"
        "  - projects: default\n"
        "    registries: [ghcr.io]\n"
    )
    events = [e for e in fixture_events() if e.key == "argocd/guestbook"][:2]  # 01, 03
    worker = start_worker(SYNCTRAIL_POLICY_FILE=str(policy))
    await worker.wait_ready()
    await _produce_events(broker.bootstrap, topics, events[:1])
    (first,) = await wait_for_records(broker.bootstrap, f"{topics}deployments", 1)
    assert sorted((v["rule"], v["image"]) for v in first.value["violations"]) == [
        ("denylist", "docker.io/library/redis:7.2.4"),
        ("unexpected", "docker.io/library/redis:7.2.4"),
    ]
    remediations = await wait_for_records(broker.bootstrap, f"{topics}remediations", 1)
    assert remediations[0].value["known_good_revision"] is None  # nothing good before

    worker.kill()
    restarted = start_worker(SYNCTRAIL_POLICY_FILE=str(policy))
    await restarted.wait_ready()  # reads the rules back from the policy topic
    await _produce_events(broker.bootstrap, topics, events[1:])
    records = await wait_for_records(broker.bootstrap, f"{topics}deployments", 2)
    second = next(r for r in records if r.value["delivery_id"] == events[1].event["delivery_id"])
    assert {v["rule_id"] for v in second.value["violations"]} == {
        v["rule_id"] for v in first.value["violations"]
    }
    violations = await read_topic(broker.bootstrap, f"{topics}violations")
    assert len(violations) == 2, "each (rule, image) is reported once while it runs"
