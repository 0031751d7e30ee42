"""The bridge in-process against the real embedded broker: answers, records, auth, limits."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import defaultdict
from pathlib import Path

import aiohttp
import orjson
import pytest

from connectors.bridge.server import accept_bare, accept_envelope
from connectors.broker import EmbeddedBroker
from streams.kafka.setup import ensure_topics
from streams.kafka.topics import SYNC_EVENTS
from tests.connectors.bridge.helpers import (
    AUTH,
    TOKEN,
    bridge_settings,
    envelope,
    fixture_bytes,
    running_bridge,
    seq_of,
    valid_fixtures,
)
from tests.contracts import validate_record
from tests.support import read_topic, wait_for_records

JSON = {"Content-Type": "application/json"}


def _topic(prefix: str) -> str:
    return f"{prefix}sync-events"


async def _sentinel_is_alone(client, broker: EmbeddedBroker, prefix: str) -> None:
    """Post one valid delivery and check it is the only record: nothing else was published."""
    resp = await client.post("/v1/sync", data=envelope("sentinel", 1), headers=AUTH)
    assert resp.status == 202
    answer = await resp.json()
    records = await wait_for_records(broker.bootstrap, _topic(prefix), 1)
    assert [r.value["delivery_id"] for r in records] == [answer["delivery_id"]]


async def test_every_valid_fixture_is_published_once_with_its_key_and_content(
    broker: EmbeddedBroker, topics: str, tmp_path: Path
) -> None:
    fixtures = valid_fixtures()
    async with running_bridge(bridge_settings(broker.bootstrap, topics, tmp_path)) as (client, _):
        answers = []
        for entry in fixtures:
            path = "/v1/sync" if entry["shape"] == "envelope" else entry["requestPath"]
            resp = await client.post(path, data=entry["raw"], headers=AUTH)
            assert resp.status == 202, (entry["file"], await resp.text())
            answer = await resp.json()
            assert answer["spooled"] is False and answer["topic"] == _topic(topics)
            answers.append(answer)
    records = await wait_for_records(broker.bootstrap, _topic(topics), len(fixtures))
    assert len(records) == len(fixtures)
    by_id = {r.value["delivery_id"]: r for r in records}
    for entry, answer in zip(fixtures, answers, strict=True):
        record = by_id[answer["delivery_id"]]
        assert (record.partition, record.offset) == (answer["partition"], answer["offset"])
        assert record.key == entry["app"]
        value = record.value
        validate_record(value)
        assert value["shape"] == entry["shape"]
        assert f"{value['app']['namespace']}/{value['app']['name']}" == entry["app"]
        assert value["body_sha256"] == hashlib.sha256(entry["raw"]).hexdigest()
        body = orjson.loads(entry["raw"])
        assert value["sync_result"] == (
            body["syncResult"] if entry["shape"] == "envelope" else body
        )


async def test_bare_body_on_the_short_route_uses_the_default_namespace(
    broker: EmbeddedBroker, topics: str, tmp_path: Path
) -> None:
    settings = bridge_settings(broker.bootstrap, topics, tmp_path, default_app_namespace="apps")
    async with running_bridge(settings) as (client, _):
        resp = await client.post(
            "/v1/sync/cluster-rbac", data=fixture_bytes("12-cluster-rbac.json"), headers=AUTH
        )
        assert resp.status == 202
    [record] = await wait_for_records(broker.bootstrap, _topic(topics), 1)
    assert record.key == "apps/cluster-rbac"
    assert record.value["app"]["namespace"] == "apps"


INVALID = [
    ("/v1/sync", "invalid-truncated-syncresult.json", 400, "not valid JSON"),
    ("/v1/sync/argocd/payments-api", "invalid-truncated-syncresult.json", 400, "not valid JSON"),
    (
        "/v1/sync/argocd/guestbook",
        "invalid-resources-not-a-list.json",
        400,
        "resources: expected a list",
    ),
    ("/v1/sync", "invalid-resources-not-a-list.json", 422, "/v1/sync/{{.app.metadata.namespace}}"),
    (
        "/v1/sync",
        "invalid-wrong-types.json",
        400,
        "syncResult.resources[0].images: expected a list of strings",
    ),
    ("/v1/sync", "invalid-plain-text-message-body.txt", 400, "webhook"),
    ("/v1/sync", "02-payments-api-rev-a.json", 422, "bare syncResult without an application"),
    ("/v1/sync/Argo_CD/payments-api", "02-payments-api-rev-a.json", 400, "path {app_namespace}"),
]


async def test_every_invalid_body_gets_the_right_4xx_and_nothing_is_published(
    broker: EmbeddedBroker, topics: str, tmp_path: Path
) -> None:
    async with running_bridge(bridge_settings(broker.bootstrap, topics, tmp_path)) as (
        client,
        bridge,
    ):
        for path, name, status, needle in INVALID:
            resp = await client.post(path, data=fixture_bytes(name), headers=AUTH)
            text = await resp.text()
            assert resp.status == status, (path, name, text)
            assert needle in json.loads(text)["error"], (name, text)
        await _sentinel_is_alone(client, broker, topics)
        assert bridge.spool.records == 0


def _oversize_body() -> bytes:
    """The body described by invalid-oversize-2mb-body.txt: valid JSON, 2 MiB + 2 bytes."""
    res = [
        {"group": "", "kind": "ConfigMap", "message": f"configmap/cm-{i:05d} unchanged", "name": f"cm-{i:05d}",
         "namespace": "bulk", "status": "Synced", "syncPhase": "Sync", "hookPhase": "Running", "version": "v1"}
        for i in range(9000)
    ]  # fmt: skip
    body = json.dumps(
        {"resources": res, "revision": "0" * 40,
         "source": {"repoURL": "https://github.com/acme/bulk.git", "path": ".", "targetRevision": "main"}},
        separators=(",", ":"), sort_keys=True,
    )  # fmt: skip
    body += " " * max(0, 2 * 1024 * 1024 + 1 - len(body))
    return (body + "\n").encode()


async def test_oversized_bodies_get_413_declared_or_streamed(
    broker: EmbeddedBroker, topics: str, tmp_path: Path
) -> None:
    body = _oversize_body()
    assert len(body) == 2_097_154
    async with running_bridge(bridge_settings(broker.bootstrap, topics, tmp_path)) as (client, _):
        resp = await client.post("/v1/sync/argocd/bulk", data=body, headers=AUTH)
        assert resp.status == 413
        assert "SYNCTRAIL_BRIDGE_MAX_BODY_BYTES" in (await resp.json())["error"]

        async def chunks():  # no Content-Length: the cap applies while reading
            for i in range(0, len(body), 65536):
                yield body[i : i + 65536]

        resp = await client.post("/v1/sync/argocd/bulk", data=chunks(), headers=AUTH)
        assert resp.status == 413
        await _sentinel_is_alone(client, broker, topics)


async def test_missing_or_wrong_credentials_get_401_and_nothing_is_published(
    broker: EmbeddedBroker, topics: str, tmp_path: Path
) -> None:
    body = fixture_bytes("03-guestbook-rev-b.json")
    settings = bridge_settings(broker.bootstrap, topics, tmp_path, bridge_basic_auth="argocd:pw")
    async with running_bridge(settings) as (client, _):
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Bearer {TOKEN}x"},
            {"Authorization": aiohttp.encode_basic_auth("argocd", "nope")},
        ):
            resp = await client.post("/v1/sync", data=body, headers={**headers, **JSON})
            assert resp.status == 401
            assert "Bearer" in resp.headers["WWW-Authenticate"]
        resp = await client.post(
            "/v1/sync",
            data=body,
            headers={"Authorization": aiohttp.encode_basic_auth("argocd", "pw"), **JSON},
        )
        assert resp.status == 202
        resp = await client.post(
            "/v1/sync", data=body, headers={"Authorization": "Bearer second-token", **JSON}
        )
        assert resp.status == 202
    records = await wait_for_records(broker.bootstrap, _topic(topics), 2)
    assert len(records) == 2


async def test_thousand_concurrent_posts_over_fifty_apps_all_land_once(
    broker: EmbeddedBroker, topics: str, tmp_path: Path
) -> None:
    # generous ack deadlines: the test is about concurrency, not failure detection, and a loaded
    # 2-core machine can take more than the helpers' 2 s to acknowledge 1000 records at once
    settings = bridge_settings(
        broker.bootstrap,
        topics,
        tmp_path,
        bridge_produce_timeout_s=30.0,
        bridge_probe_after_s=10.0,
    )
    async with running_bridge(settings) as (client, _):
        url = str(client.make_url("/v1/sync"))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000)) as session:

            async def post(i: int) -> dict:
                async with session.post(
                    url, data=envelope(f"app-{i % 50}", i), headers=AUTH
                ) as resp:
                    assert resp.status == 202, await resp.text()
                    return await resp.json()

            answers = await asyncio.gather(*(post(i) for i in range(1000)))
    assert not any(a["spooled"] for a in answers)
    records = await wait_for_records(broker.bootstrap, _topic(topics), 1000)
    assert len(records) == 1000
    assert {r.value["delivery_id"] for r in records} == {a["delivery_id"] for a in answers}
    where = {r.value["delivery_id"]: (r.partition, r.offset) for r in records}
    assert all(where[a["delivery_id"]] == (a["partition"], a["offset"]) for a in answers)
    partitions = defaultdict(set)
    for r in records:
        partitions[r.key].add(r.partition)
    assert len(partitions) == 50 and all(len(p) == 1 for p in partitions.values())


async def test_each_apps_deliveries_keep_their_order_under_concurrency(
    broker: EmbeddedBroker, topics: str, tmp_path: Path
) -> None:
    async with running_bridge(bridge_settings(broker.bootstrap, topics, tmp_path)) as (client, _):

        async def app_sequence(app: int) -> None:
            for seq in range(20):  # one app's deploys, one after the other, as Argo CD sends them
                resp = await client.post("/v1/sync", data=envelope(f"app-{app}", seq), headers=AUTH)
                assert resp.status == 202

        await asyncio.gather(*(app_sequence(a) for a in range(50)))
    records = await wait_for_records(broker.bootstrap, _topic(topics), 1000)
    per_app = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        per_app[r.key].append(seq_of(r.value))
    assert len(per_app) == 50
    assert all(seqs == list(range(20)) for seqs in per_app.values())


async def test_health_readiness_and_metrics(
    broker: EmbeddedBroker, topics: str, tmp_path: Path
) -> None:
    async with running_bridge(bridge_settings(broker.bootstrap, topics, tmp_path)) as (client, _):
        assert (await client.get("/healthz")).status == 200
        ready = await client.get("/readyz")
        assert ready.status == 200 and (await ready.json())["broker"] == "up"
        await client.post(
            "/v1/sync/argocd/payments-api",
            data=fixture_bytes("02-payments-api-rev-a.json"),
            headers=AUTH,
        )
        await client.post("/v1/sync/argocd/payments-api", data=b"{", headers=AUTH)
        await client.post("/v1/sync", data=b"{}", headers={})
        await client.get("/nowhere/at/all")
        text = await (await client.get("/metrics")).text()
    assert (
        'synctrail_bridge_requests_total{route="/v1/sync/{app_namespace}/{app}",status="202"} 1.0'
        in text
    )
    assert (
        'synctrail_bridge_requests_total{route="/v1/sync/{app_namespace}/{app}",status="400"} 1.0'
        in text
    )
    assert 'synctrail_bridge_requests_total{route="/v1/sync",status="401"} 1.0' in text
    assert 'route="unmatched",status="404"' in text
    assert "argocd/payments-api" not in text  # raw paths never become labels
    assert 'synctrail_bridge_deliveries_total{outcome="published"} 1.0' in text
    assert 'synctrail_bridge_deliveries_total{outcome="rejected"} 2.0' in text
    assert "synctrail_bridge_produce_duration_seconds_count 1.0" in text
    assert "synctrail_bridge_request_body_bytes_count 2.0" in text
    assert "synctrail_bridge_spool_records 0.0" in text


async def test_other_methods_get_aiohttps_405_with_allow_and_are_counted_unmatched(
    broker: EmbeddedBroker, topics: str, tmp_path: Path
) -> None:
    async with running_bridge(bridge_settings(broker.bootstrap, topics, tmp_path)) as (client, _):
        wrong = await client.get("/v1/sync", headers=AUTH)
        assert (wrong.status, wrong.headers["Allow"]) == (405, "POST")
        wrong = await client.put("/v1/sync/argocd/payments-api", headers=AUTH)
        assert (wrong.status, wrong.headers["Allow"]) == (405, "POST")
        wrong = await client.post("/healthz")
        assert (wrong.status, set(wrong.headers["Allow"].split(","))) == (405, {"GET", "HEAD"})
        assert (await client.head("/healthz")).status == 200
        assert (await client.get("/v1/sync/a/b/c")).status == 404
        text = await (await client.get("/metrics")).text()
    assert 'synctrail_bridge_requests_total{route="unmatched",status="405"} 3.0' in text
    assert 'synctrail_bridge_requests_total{route="unmatched",status="404"} 1.0' in text
    assert 'synctrail_bridge_requests_total{route="/healthz",status="200"} 1.0' in text


async def test_anonymous_bridge_accepts_unauthenticated_posts(
    broker: EmbeddedBroker, topics: str, tmp_path: Path
) -> None:
    settings = bridge_settings(
        broker.bootstrap, topics, tmp_path, bridge_tokens=None, bridge_allow_anonymous=True
    )
    async with running_bridge(settings) as (client, _):
        resp = await client.post("/v1/sync", data=envelope("anon", 1), headers=JSON)
        assert resp.status == 202
    assert len(await read_topic(broker.bootstrap, _topic(topics))) == 1


async def test_a_topic_met_after_start_does_not_make_the_bridge_forget_its_own(
    broker: EmbeddedBroker, topics: str, tmp_path: Path
) -> None:
    settings = bridge_settings(broker.bootstrap, topics, tmp_path)
    async with running_bridge(settings) as (client, bridge):
        # As when the spool drains a record of an earlier prefix whose topic is new to the
        # producer: aiokafka then tracks that topic, and refreshes only tracked topics.
        later = f"later-{topics}"
        await ensure_topics(broker.bootstrap, later, partitions=8, topics=[SYNC_EVENTS])
        producer = bridge.dispatcher._producer
        assert producer is not None
        await producer.send_and_wait(_topic(later), b"{}", key=b"argocd/old")
        await producer.client.force_metadata_update()

        assert producer.client.cluster.partitions_for_topic(_topic(topics)) == set(range(8))
        resp = await client.post("/v1/sync", data=envelope("app", 1), headers=AUTH)
        assert resp.status == 202, await resp.text()
        assert (await resp.json())["spooled"] is False


@pytest.mark.parametrize("entry", valid_fixtures(), ids=lambda e: e["file"])
def test_an_accepted_body_is_its_contract_record_keyed_by_the_qualified_app(entry: dict) -> None:
    if entry["shape"] == "envelope":
        accepted = accept_envelope(entry["raw"], "argocd")
    else:
        namespace, name = entry["requestPath"].split("/")[-2:]
        accepted = accept_bare(entry["raw"], namespace, name)
    record = orjson.loads(accepted.value)
    validate_record(record)
    assert accepted.key == entry["app"] == f"{record['app']['namespace']}/{record['app']['name']}"
    assert accepted.delivery_id == record["delivery_id"]
    assert record["body_sha256"] == hashlib.sha256(entry["raw"]).hexdigest()


HEALTH_EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "payloads" / "health"


async def test_observed_at_and_commit_reach_the_record_and_a_bad_one_is_refused(
    broker: EmbeddedBroker, topics: str, tmp_path: Path
) -> None:
    degraded = (HEALTH_EXAMPLES / "02-guestbook-rev-d-degraded.json").read_bytes()
    bad = orjson.loads(degraded)
    bad["commit"]["date"] = "2026-07-10 11:21:37"
    async with running_bridge(bridge_settings(broker.bootstrap, topics, tmp_path)) as (client, _):
        resp = await client.post("/v1/sync", data=orjson.dumps(bad), headers=AUTH)
        assert resp.status == 400
        assert (await resp.json())["problems"] == [
            "commit.date: '2026-07-10 11:21:37' is not an RFC 3339 timestamp "
            "(e.g. 2026-07-06T09:13:42Z)"
        ]
        for raw in (degraded, fixture_bytes("10-guestbook-rev-d.json")):
            resp = await client.post("/v1/sync", data=raw, headers=AUTH)
            assert resp.status == 202, await resp.text()
    with_them, without = await wait_for_records(broker.bootstrap, _topic(topics), 2)
    for record in (with_them, without):
        validate_record(record.value)
    assert with_them.value["health"] == "Degraded"
    assert with_them.value["observed_at"] == "2026-07-10T11:42:51.604Z"
    assert with_them.value["commit"]["date"] == "2026-07-10T11:21:37Z"
    assert without.value["observed_at"] is None and without.value["commit"] is None
