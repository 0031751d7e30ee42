"""Health transitions and DORA findings through the worker on the real broker: docs/dora.md's
worked example, and the health examples of examples/payloads/health.

guestbook's example payloads (01, 03 with rev b's commit, 04, 07, 10, 13) and two health
transitions of rev c's operation (its body again, Degraded observed at 13:40, Healthy at 14:10)
go through the worker as the bridge would write them; the ``synctrail.dora/v1`` records on
the metrics topic are those the docs' rules predict, and the DORA history the worker stored in
the app's state gives the worked example's figures. The health examples (rev d's deployment
with its commit, then the same operation Degraded) run as a second app, ``staging/guestbook``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from connectors.bridge.events import envelope_event
from streams.domain import dora, records
from tests.contracts import validate_record
from tests.e2e.harness import Worker
from tests.support import (
    REPO,
    assert_cloudevents_headers_on_every_record,
    produce,
    read_topic,
    wait_for,
)

PAYLOADS = REPO / "examples" / "payloads"
GUESTBOOK = "argocd/guestbook"
STAGING = "staging/guestbook"
REV_B = "00c875f3417734f356f3fdfad5949f6c01267c67"
REV_C = "b225b2dec1fab80d8f84a5fc20dc8f18e05f92ac"
REV_D = "2c1f426be077299e6697edfbd9e6160fbab844de"
REV_E = "e147fe524231adc160e8965b2fe5b0edc2fcdfbe"


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _body(path: str) -> dict[str, Any]:
    return dict(orjson.loads((PAYLOADS / path).read_bytes()))


def _sync_event(number: int, body: dict[str, Any], received_at: str) -> tuple[bytes, bytes]:
    """What the bridge writes for ``body``: the key and the ``synctrail.sync-event/v1`` value."""
    event = envelope_event(
        body,
        orjson.dumps(body),
        default_namespace="argocd",
        delivery_id=f"{number:032x}",
        received_at=received_at,
    )
    return f"{event['app']['namespace']}/{event['app']['name']}".encode(), orjson.dumps(event)


def _worked_example() -> list[tuple[bytes, bytes]]:
    """docs/dora.md's worked example as deliveries, each received within a second of its time."""
    rev_b = _body("03-guestbook-rev-b.json")
    rev_b["commit"] = {"revision": REV_B, "date": "2026-07-07T12:03:05Z"}
    rev_c = _body("07-guestbook-rev-c.json")
    bodies = [
        _body("01-guestbook-rev-a.json"),
        rev_b,
        _body("04-guestbook-rev-b-retry.json"),
        rev_c,
        rev_c | {"health": "Degraded", "observedAt": "2026-07-08T13:40:00.000Z"},
        rev_c | {"health": "Healthy", "observedAt": "2026-07-08T14:10:00.000Z"},
        _body("10-guestbook-rev-d.json"),
        _body("13-guestbook-rev-e-failed.json"),
    ]
    out = []
    for number, body in enumerate(bodies):
        when = body.get("observedAt") or body["operation"]["finishedAt"]
        out.append(_sync_event(number, body, when.replace("Z", "").split(".")[0] + ".900Z"))
    return out


def _health_examples() -> list[tuple[bytes, bytes]]:
    """examples/payloads/health in order, as the app ``staging/guestbook``."""
    out = []
    for number, name in enumerate(["01-guestbook-rev-d-commit", "02-guestbook-rev-d-degraded"]):
        body = _body(f"health/{name}.json")
        body["app"] = body["app"] | {"namespace": "staging"}
        out.append(_sync_event(100 + number, body, "2026-07-10T11:43:00.000Z"))
    return out


def _id(number: int) -> str:
    return f"{number:032x}"


# (app, kind, delivery that brought it, deployment, at, seconds, reason/health)
EXPECTED = [
    (GUESTBOOK, "lead_time", _id(1), _id(1), "2026-07-07T14:03:05.000Z", 7200.0, None),
    (GUESTBOOK, "health_transition", _id(4), _id(3), "2026-07-08T13:40:00.000Z", 1410.0, "Degraded"),
    (GUESTBOOK, "change_failure", _id(4), _id(3), "2026-07-08T13:40:00.000Z", None, "degraded"),
    (GUESTBOOK, "health_transition", _id(5), _id(3), "2026-07-08T14:10:00.000Z", 3210.0, "Healthy"),
    (GUESTBOOK, "recovery", _id(5), None, "2026-07-08T14:10:00.000Z", 1800.0, None),
    (GUESTBOOK, "change_failure", _id(7), _id(7), "2026-07-11T12:48:03.000Z", None, "operation"),
    (STAGING, "lead_time", _id(100), _id(100), "2026-07-10T11:30:48.000Z", 551.0, None),
    (STAGING, "health_transition", _id(101), _id(100), "2026-07-10T11:42:51.604Z", 723.604, "Degraded"),
    (STAGING, "change_failure", _id(101), _id(100), "2026-07-10T11:42:51.604Z", None, "degraded"),
]  # fmt: skip


def _summary(record: Any) -> tuple[Any, ...]:
    v = record.value
    return (
        record.key,
        v["kind"],
        v["delivery_id"],
        v["deployment"],
        v["at"],
        v["seconds"],
        v["health"] or v["reason"],
    )


async def _newest_states(bootstrap: str, changelog: str) -> dict[str, dict[str, Any]]:
    return {r.key: r.value for r in await read_topic(bootstrap, changelog) if r.key}


async def test_the_worked_example_and_the_health_examples_give_the_dora_records_and_keys(
    broker, topics: str, worker_env: dict[str, str], start_worker: Callable[..., Worker]
) -> None:
    worker = start_worker()
    await worker.wait_ready()
    await produce(broker.bootstrap, f"{topics}sync-events", _worked_example() + _health_examples())

    async def dora_records() -> list[Any] | None:
        found = await read_topic(broker.bootstrap, f"{topics}metrics")
        found = [r for r in found if r.value["schema"] == records.DORA_V1]
        return found if len(found) >= len(EXPECTED) else None

    found = await wait_for(dora_records, timeout=90, what="the DORA records")
    distinct = list(dict.fromkeys(_summary(r) for r in found))  # at-least-once may repeat
    assert sorted(distinct) == sorted(EXPECTED)
    for app in (GUESTBOOK, STAGING):  # each app's in the order decided
        assert [s for s in distinct if s[0] == app] == [e for e in EXPECTED if e[0] == app]
    for record in found:
        validate_record(record.value)
    by_app = sorted(found, key=lambda r: r.key != GUESTBOOK)  # stable: each app's in order
    transitions = [r.value for r in by_app if r.value["kind"] == "health_transition"]
    assert [(t["previous_health"], t["revision"]) for t in transitions] == [
        ("Progressing", REV_C),
        ("Degraded", REV_C),
        ("Healthy", REV_D),
    ]

    # nothing announced for the transitions (or the duplicates): six deployments in all
    deployments = await read_topic(broker.bootstrap, f"{topics}deployments")
    assert {r.value["delivery_id"] for r in deployments} == {_id(n) for n in (0, 1, 3, 6, 7, 100)}

    changelog = f"{worker_env['SYNCTRAIL_WORKER_ID']}-apps-changelog"

    async def stored() -> dict[str, dict[str, Any]] | None:
        states = await _newest_states(broker.bootstrap, changelog)
        done = states.get(GUESTBOOK, {}).get("revision") == REV_E
        return states if done and states.get(STAGING, {}).get("health") == "Degraded" else None

    states = await wait_for(stored, timeout=60, what="the apps' states in the changelog")
    guestbook, staging = states[GUESTBOOK], states[STAGING]
    got = dora.keys([guestbook["dora"]], now=_utc("2026-07-12T12:48:03Z")).as_json()
    assert (got["deployments"], got["succeeded"], got["failed"]) == (5, 4, 1)
    assert (got["failed_deployments"], got["change_failure_rate"]) == (2, 0.4)
    assert got["recovery_time_seconds"]["median"] == 1800.0
    assert got["recovery_time_seconds"]["count"] == 1 and got["unrecovered_failures"] == 1
    assert got["lead_time_seconds"]["median"] == 7200.0 and got["lead_time_seconds"]["count"] == 1
    assert (got["window_days"], got["deployments_per_day"]) == (6.148866, 0.813158)
    assert got["levels"] == {
        "deployment_frequency": "high",
        "lead_time": "elite",
        "change_failure_rate": "low",
        "recovery_time": "elite",
    }
    assert staging["health"] == "Degraded"
    assert staging["health_changed_at"] == "2026-07-10T11:42:51.604Z"
    assert staging["revision"] == REV_D
    counts = await assert_cloudevents_headers_on_every_record(
        broker.bootstrap, topics, ["metrics", "deployments"]
    )
    assert counts["metrics"] >= len(EXPECTED)
