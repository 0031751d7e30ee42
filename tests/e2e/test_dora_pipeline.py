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
from tests.e2e.pipeline import Webhook
from tests.slack_server import SlackServer
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


ASKED = "2026-07-12T12:48:03Z"  # when docs/dora.md's worked example is asked
#: docs/dora.md's worked example, as /dora answers it for guestbook (and for its project)
WORKED_EXAMPLE = {
    "deployments": 5,
    "succeeded": 4,
    "failed": 1,
    "failed_deployments": 2,
    "change_failure_rate": 0.4,
    "unrecovered_failures": 1,
    "window_days": 6.148866,
    "deployments_per_day": 0.813158,
    "levels": {
        "deployment_frequency": "high",
        "lead_time": "elite",
        "change_failure_rate": "low",
        "recovery_time": "elite",
    },
}


def _figures(answer: dict[str, Any]) -> dict[str, Any]:
    got = {name: answer[name] for name in WORKED_EXAMPLE}
    for name in ("recovery_time_seconds", "lead_time_seconds"):
        summary = answer[name]
        got[name] = (summary["count"], summary["median"], summary["estimated"])
    return got


def _worked_example_webhooks() -> list[Webhook]:
    """The worked example's bodies as Argo CD would POST them to the bridge's /v1/sync."""
    rev_b = _body("03-guestbook-rev-b.json")
    rev_b["commit"] = {"revision": REV_B, "date": "2026-07-07T12:03:05Z"}
    rev_c = _body("07-guestbook-rev-c.json")
    bodies = [
        ("01", _body("01-guestbook-rev-a.json")),
        ("03+commit", rev_b),
        ("04", _body("04-guestbook-rev-b-retry.json")),
        ("07", rev_c),
        ("07 Degraded", rev_c | {"health": "Degraded", "observedAt": "2026-07-08T13:40:00.000Z"}),
        ("07 Healthy", rev_c | {"health": "Healthy", "observedAt": "2026-07-08T14:10:00.000Z"}),
        ("10", _body("10-guestbook-rev-d.json")),
        ("13", _body("13-guestbook-rev-e-failed.json")),
    ]
    return [Webhook(name, "/v1/sync", orjson.dumps(body)) for name, body in bodies]


async def test_dora_answers_the_worked_example_through_bridge_and_worker_and_after_a_restart(
    start_pipeline, start_worker: Callable[..., Worker]
) -> None:
    async with SlackServer() as slack_server:
        pipeline = start_pipeline(slack_server)
        await pipeline.wait_ready()
        answers = await pipeline.post(_worked_example_webhooks())
        assert [a.status for a in answers] == [202] * len(answers), answers
        outcomes = await pipeline.wait_worker_done(len(answers), timeout=90)
        assert outcomes.get("health_transition") == 2 and outcomes.get("duplicate") == 1

        want = {
            **WORKED_EXAMPLE,
            "recovery_time_seconds": (1, 1800.0, False),
            "lead_time_seconds": (1, 7200.0, False),
        }
        status, by_app = await pipeline.worker.get("/dora", app=GUESTBOOK, until=ASKED)
        assert status == 200, by_app
        assert by_app["app"] == GUESTBOOK and _figures(by_app) == want
        status, by_project = await pipeline.worker.get("/dora", project="default", until=ASKED)
        assert status == 200, by_project
        assert by_project["project"] == "default" and _figures(by_project) == want
        # since/until select deployments by their finish: rev c and rev d only
        status, middle = await pipeline.worker.get(
            "/dora", app=GUESTBOOK, since="2026-07-08T00:00:00Z", until="2026-07-11T00:00:00Z"
        )
        assert status == 200 and (middle["deployments"], middle["failed_deployments"]) == (2, 1)
        status, missing = await pipeline.worker.get("/dora", app="argocd/never-deployed")
        assert status == 404 and "argocd/never-deployed" in str(missing)

        # the degradation and the return to Healthy reached Slack, the deploys once each
        await wait_for(
            lambda: len(slack_server.posts()) >= 7, timeout=60, what="5 deploys + 2 health posts"
        )
        texts = [p.text for p in slack_server.posts()]
        assert len(texts) == 7, texts
        assert [t for t in texts if "degraded" in t or "healthy again" in t] == [
            t for t in texts if "guestbook" in t and ("degraded" in t or "healthy again" in t)
        ]
        assert sum("degraded" in t for t in texts) == 1
        assert sum("healthy again" in t for t in texts) == 1

        # a new worker rebuilds the states from the changelog and answers the same
        pipeline.worker.stop()
        restarted = start_worker()
        await restarted.wait_ready(timeout=90)
        status, again = await restarted.get("/dora", app=GUESTBOOK, until=ASKED)
        assert status == 200 and again == by_app
        status, again = await restarted.get("/dora", project="default", until=ASKED)
        assert status == 200 and again == by_project
