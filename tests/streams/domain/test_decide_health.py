"""Health transitions and the DORA history in the decisions (pure), on hand-made sequences.

Each sequence is one app's deliveries decided in order, as the agent does; the ``synctrail.dora/v1``
records the decisions list are what the worker writes to the metrics topic (docs/dora.md).
"""

from __future__ import annotations

import hashlib
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from connectors.bridge.events import envelope_event
from streams.domain import dora, records
from streams.domain.decide import (
    DEPLOYED,
    DUPLICATE,
    HEALTH_TRANSITION,
    RESYNC,
    STALE,
    Context,
    Decision,
    decide,
)
from tests.streams.domain.test_decide import event
from tests.support import REPO

NOW = datetime(2026, 11, 28, 10, 0, 1, tzinfo=UTC)
_BODIES = itertools.count()


def at(hhmm: str, day: int = 6) -> str:
    return f"2026-07-{day:02d}T{hhmm}:00Z"


def epoch(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def deploy(
    revision: str,
    started: str,
    *,
    image: str | None = None,
    phase: str = "Succeeded",
    health: str | None = "Progressing",
    commit_date: str | None = None,
    revisions: list[str] | None = None,
    shape: str = "envelope",
) -> dict[str, Any]:
    """A delivery of a new operation, finished a minute after it started."""
    e = event(
        revision,
        {"web": image or f"ghcr.io/acme/web:{revision[:6]}"},
        started=started,
        phase=phase,
        revisions=revisions,
        shape=shape,
    )
    if e["operation"]:
        e["operation"]["finished_at"] = (epoch(started) + timedelta(minutes=1)).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
    e["health"] = health if shape == "envelope" else None
    if commit_date:
        e["commit"] = {"revision": revision, "date": commit_date, "author": None, "message": None}
    return e


def health_of(
    deployed: dict[str, Any], health: str, observed: str | None, *, received: str | None = None
) -> dict[str, Any]:
    """Argo CD's health trigger: the same operation again, another health, its own body."""
    again = dict(deployed)
    again["delivery_id"] = f"h{next(_BODIES)}"
    again["health"] = health
    again["observed_at"] = observed
    again["body_sha256"] = hashlib.sha256(again["delivery_id"].encode()).hexdigest()
    if received:
        again["received_at"] = received
    return again


def run(*events: dict[str, Any], ctx: Context | None = None, state: Any = None) -> list[Decision]:
    decisions = []
    for e in events:
        decision = decide(e, state, [], now=NOW, ctx=ctx or Context())
        decisions.append(decision)
        state = decision.state if decision.state is not None else state
    return decisions


def dora_records(decisions: list[Decision]) -> list[dict[str, Any]]:
    """Every ``synctrail.dora/v1`` record, each checked against its type."""
    found = []
    for decision in decisions:
        for metric in decision.metrics:
            if metric["schema"] == records.DORA_V1:
                msgspec.convert(metric, records.DoraEvent)
                found.append(metric)
    return found


def findings(decisions: list[Decision], *kinds: str) -> list[dict[str, Any]]:
    wanted = kinds or ("change_failure", "lead_time", "recovery")
    return [r for r in dora_records(decisions) if r["kind"] in wanted]


def last_state(decisions: list[Decision]) -> dict[str, Any]:
    state = next(d.state for d in reversed(decisions) if d.state is not None)
    assert state is not None
    return state


# --- health transitions --------------------------------------------------------------------------


def test_another_health_for_the_decided_operation_is_a_transition_never_announced():
    a = deploy("a" * 40, at("09:00"))
    degraded = health_of(a, "Degraded", "2026-07-06T09:20:30.250Z")
    first, second = run(a, degraded)
    assert second.outcome == HEALTH_TRANSITION
    assert second.deployment is None and second.violations == [] and second.remediation is None
    assert second.state is not None
    assert second.state["health"] == "Degraded"
    assert second.state["health_changed_at"] == "2026-07-06T09:20:30.250Z"
    assert second.state["last_operation"] == first.state["last_operation"]  # same operation
    assert second.state["history"] == first.state["history"]  # nothing announced
    assert degraded["delivery_id"] in second.state["recent_delivery_ids"]
    transition = dora_records([second])[0]
    assert transition == {
        "schema": records.DORA_V1,
        "kind": "health_transition",
        "app": "argocd/shop",
        "project": "default",
        "timestamp": NOW.timestamp(),
        "delivery_id": degraded["delivery_id"],
        "at": "2026-07-06T09:20:30.250Z",
        "health": "Degraded",
        "previous_health": "Progressing",
        "deployment": a["delivery_id"],
        "revision": "a" * 40,
        "reason": None,
        "seconds": 1170.25,  # since 09:01:00, the operation's finish
        "episode": None,
        "started_at": None,
    }
    # and what it changed: a's change failure (Degraded inside its window)
    assert [(r["kind"], r["deployment"], r["reason"]) for r in findings([second])] == [
        ("change_failure", a["delivery_id"], "degraded")
    ]
    assert [m["kind"] for m in second.metrics] == ["health_transition", "change_failure"]


def test_the_same_health_again_stays_a_duplicate_with_its_duplicate_metric():
    a = deploy("a" * 40, at("09:00"), health="Healthy")
    again = health_of(a, "Healthy", at("09:05"))
    first, second = run(a, again)
    assert second.outcome == DUPLICATE
    assert [m["kind"] for m in second.metrics] == ["duplicate"]
    assert second.metrics[0]["schema"] == records.METRIC_V1
    assert second.state is not None and "health_changed_at" not in second.state
    assert {k: v for k, v in second.state.items() if k != "recent_delivery_ids"} == {
        k: v for k, v in first.state.items() if k != "recent_delivery_ids"
    }


def test_a_transition_without_observed_at_is_timed_by_its_receipt():
    a = deploy("a" * 40, at("09:00"))
    degraded = health_of(a, "Degraded", None, received="2026-07-06T09:30:00.500Z")
    _, second = run(a, degraded)
    assert second.state is not None
    assert second.state["health_changed_at"] == "2026-07-06T09:30:00.500Z"
    assert dora_records([second])[0]["at"] == "2026-07-06T09:30:00.500Z"
    assert dora_records([second])[0]["seconds"] == 1740.5


def test_a_transition_delivered_twice_gives_one_record():
    a = deploy("a" * 40, at("09:00"))
    degraded = health_of(a, "Degraded", at("09:20"))
    bridge_copy = dict(degraded)  # the bridge's own repeat: the same delivery id
    argo_retry = health_of(a, "Degraded", at("09:20"))  # Argo CD's: a new delivery id
    decisions = run(a, degraded, bridge_copy, argo_retry)
    assert [d.outcome for d in decisions] == [DEPLOYED, HEALTH_TRANSITION, DUPLICATE, DUPLICATE]
    assert len(dora_records(decisions[2:])) == 0
    assert decisions[3].state is not None and decisions[1].state is not None
    assert decisions[3].state["dora"] == decisions[1].state["dora"]


def test_a_late_retry_of_an_earlier_transition_is_stale():
    a = deploy("a" * 40, at("09:00"))
    degraded = health_of(a, "Degraded", at("09:20"))
    healthy = health_of(a, "Healthy", at("09:50"))
    late = health_of(a, "Degraded", at("09:20"))  # Argo CD's retry, behind the Healthy one
    decisions = run(a, degraded, healthy, late)
    assert [d.outcome for d in decisions] == [DEPLOYED, HEALTH_TRANSITION, HEALTH_TRANSITION, STALE]
    assert decisions[3].state is not None
    assert decisions[3].state["health"] == "Healthy"
    assert [m["kind"] for m in decisions[3].metrics] == ["stale"]


def test_a_stale_retry_of_an_older_operation_stays_stale_whatever_its_health():
    a = deploy("a" * 40, at("09:00"))
    b = deploy("b" * 40, at("10:00"))
    a_degraded = health_of(a, "Degraded", at("10:30"))  # about a, reaching us after b
    decisions = run(a, b, a_degraded)
    assert decisions[2].outcome == STALE
    assert [m["kind"] for m in decisions[2].metrics] == ["stale"]
    assert decisions[2].state is not None and decisions[2].state["health"] == "Progressing"


def test_a_transition_of_a_bare_body_app_never_happens_health_is_not_reported():
    a = deploy("a" * 40, at("09:00"), shape="bare")
    again = health_of(a, "Healthy", None) | {"health": None}
    assert [d.outcome for d in run(a, again)] == [DEPLOYED, DUPLICATE]


# --- the DORA history and its findings -----------------------------------------------------------


def test_every_announced_deployment_is_in_the_dora_history_resyncs_and_duplicates_are_not():
    a = deploy("a" * 40, at("09:00"))
    resync = deploy("a" * 40, at("09:30"))
    b = deploy("b" * 40, at("10:00"))
    decisions = run(a, health_of(a, "Progressing", None), resync, b)
    assert [d.outcome for d in decisions] == [DEPLOYED, DUPLICATE, RESYNC, DEPLOYED]
    assert decisions[2].state is not None and decisions[1].state is not None
    assert decisions[2].state["dora"] == decisions[1].state["dora"]
    history = last_state(decisions)["dora"]
    assert [d[dora.ID] for d in history["deployments"]] == [a["delivery_id"], b["delivery_id"]]


def test_a_failed_operation_is_a_change_failure_at_its_finish():
    a = deploy("a" * 40, at("09:00"))
    b = deploy("b" * 40, at("10:00"), phase="Failed")
    decisions = run(a, b)
    assert [(r["kind"], r["deployment"], r["reason"], r["at"]) for r in findings(decisions)] == [
        ("change_failure", b["delivery_id"], "operation", "2026-07-06T10:01:00.000Z")
    ]
    assert all(r["delivery_id"] == b["delivery_id"] for r in findings(decisions))


@pytest.mark.parametrize(("back_at", "failed"), [("10:40", True), ("11:30", False)])
def test_a_rollback_inside_the_window_fails_the_change_it_rolls_back(back_at, failed):
    a = deploy("a" * 40, at("09:00"), image="ghcr.io/acme/web:1")
    b = deploy("b" * 40, at("10:00"), image="ghcr.io/acme/web:2")
    back = deploy("a" * 40, at(back_at), image="ghcr.io/acme/web:1")
    decisions = run(a, b, back)
    assert decisions[2].deployment is not None and decisions[2].deployment["rollback"] is True
    expected = [("change_failure", b["delivery_id"], "rollback")] if failed else []
    got = [(r["kind"], r["deployment"], r["reason"]) for r in findings(decisions)]
    assert got == expected


@pytest.mark.parametrize(("degraded_at", "failed"), [("10:59", True), ("11:02", False)])
def test_degraded_inside_the_window_fails_the_deployment_outside_it_does_not(degraded_at, failed):
    a = deploy("a" * 40, at("10:00"))  # finished 10:01
    decisions = run(a, health_of(a, "Degraded", at(degraded_at)))
    assert dora_records(decisions[1:])[0]["kind"] == "health_transition"
    got = [(r["kind"], r["reason"], r["at"]) for r in findings(decisions)]
    expected = [("change_failure", "degraded", f"2026-07-06T{degraded_at}:00.000Z")]
    assert got == (expected if failed else [])


def test_the_failure_window_is_the_contexts():
    a = deploy("a" * 40, at("10:00"))
    ctx = Context(dora_failure_window_s=600.0)
    decisions = run(a, health_of(a, "Degraded", at("10:20")), ctx=ctx)
    assert findings(decisions) == []  # 19 minutes after: outside a 10-minute window


def test_a_return_to_healthy_ends_the_failure_with_its_recovery_time():
    a = deploy("a" * 40, at("10:00"))
    decisions = run(a, health_of(a, "Degraded", at("10:20")), health_of(a, "Healthy", at("10:50")))
    recovery = findings(decisions, "recovery")
    assert [(r["episode"], r["started_at"], r["at"], r["seconds"]) for r in recovery] == [
        (0, "2026-07-06T10:20:00.000Z", "2026-07-06T10:50:00.000Z", 1800.0)
    ]
    assert recovery[0]["delivery_id"] == decisions[2].metrics[0]["delivery_id"]


def test_the_next_good_deployment_ends_the_failure_reported_once_final():
    failed = deploy("a" * 40, at("10:00"), phase="Failed")  # finished 10:01
    fixed = deploy("b" * 40, at("10:10"))  # finished 10:11: 10 minutes later
    later = deploy("c" * 40, at("12:00"))  # nothing degraded fixed's window: final now
    decisions = run(failed, fixed, later)
    assert findings(decisions[1:2], "recovery") == []  # a Degraded may still come
    assert [(r["started_at"], r["seconds"]) for r in findings(decisions, "recovery")] == [
        ("2026-07-06T10:01:00.000Z", 600.0)
    ]
    assert findings(decisions, "recovery")[0]["delivery_id"] == later["delivery_id"]


def test_lead_time_with_a_commit_and_none_without():
    a = deploy("a" * 40, at("09:00"), commit_date="2026-07-06T08:01:00Z")
    b = deploy("b" * 40, at("10:00"))
    decisions = run(a, b)
    assert [(r["deployment"], r["revision"], r["seconds"]) for r in findings(decisions)] == [
        (a["delivery_id"], "a" * 40, 3600.0)
    ]
    assert findings(decisions)[0]["at"] == "2026-07-06T09:01:00.000Z"


def test_a_multi_source_app_is_one_deployment_per_sync_and_rolls_back_as_one():
    one = deploy("", at("09:00"), revisions=["a" * 40, "1.0.0"], image="ghcr.io/acme/web:1")
    two = deploy("", at("10:00"), revisions=["b" * 40, "1.0.0"], image="ghcr.io/acme/web:2")
    back = deploy("", at("10:30"), revisions=["a" * 40, "1.0.0"], image="ghcr.io/acme/web:1")
    decisions = run(one, two, back)
    assert [d.outcome for d in decisions] == [DEPLOYED] * 3
    history = last_state(decisions)["dora"]
    assert len(history["deployments"]) == 3
    assert history["deployments"][0][dora.REVISIONS] == sorted(
        dora.digest(r) for r in ["a" * 40, "1.0.0"]
    )
    got = [(r["kind"], r["deployment"], r["reason"]) for r in findings(decisions)]
    assert got == [("change_failure", two["delivery_id"], "rollback")]  # no commit: no lead


def test_a_state_from_before_the_dora_history_starts_an_empty_one():
    (a,) = run(deploy("a" * 40, at("09:00")))
    assert a.state is not None
    old = {k: v for k, v in a.state.items() if k != "dora"}
    a_event = deploy("a" * 40, at("09:00"))
    a_event["delivery_id"] = old["last_operation"]["delivery_id"]
    degraded = health_of(a_event, "Degraded", at("09:20"))
    (transition,) = run(degraded, state=old)
    assert transition.outcome == HEALTH_TRANSITION
    assert [m["kind"] for m in transition.metrics] == ["health_transition"]  # no past invented
    assert transition.state is not None
    assert transition.state["dora"]["deployments"] == []
    (b,) = run(deploy("b" * 40, at("10:00")), state=transition.state)
    assert b.state is not None
    assert len(b.state["dora"]["deployments"]) == 1


def test_the_dora_history_keeps_the_contexts_number_of_deployments():
    ctx = Context(dora_history=2)
    starts = ["09:00", "10:00", "11:00", "12:00"]
    decisions = run(*(deploy(c * 40, at(s)) for c, s in zip("abcd", starts, strict=True)), ctx=ctx)
    history = last_state(decisions)["dora"]
    assert len(history["deployments"]) == 2
    assert dora.folded_of(history)["deployments"] == 2


def test_the_history_gives_the_keys_of_the_sequence():
    a = deploy("a" * 40, at("09:00"), commit_date="2026-07-06T07:01:00Z")
    b = deploy("b" * 40, at("10:00"), phase="Failed")
    c = deploy("c" * 40, at("10:30"))
    decisions = run(a, b, c, health_of(c, "Healthy", at("12:00")))
    history = last_state(decisions)["dora"]
    keys = dora.keys([history], now=epoch(at("13:00"))).as_json()
    assert (keys["deployments"], keys["failed_deployments"]) == (3, 1)
    assert keys["recovery_time_seconds"]["max"] == 1800.0  # 10:01 → 10:31
    assert keys["lead_time_seconds"]["max"] == 7200.0


def test_the_worked_example_of_the_docs_through_decide_alone():
    """docs/dora.md's worked example: the payloads and two transitions, all as deliveries."""

    def body(name: str) -> dict[str, Any]:
        return dict(msgspec.json.decode((REPO / "examples" / "payloads" / name).read_bytes()))

    rev_b, rev_c = body("03-guestbook-rev-b.json"), body("07-guestbook-rev-c.json")
    rev_b["commit"] = {"revision": rev_b["revision"], "date": "2026-07-07T12:03:05Z"}
    bodies = [body("01-guestbook-rev-a.json"), rev_b, body("04-guestbook-rev-b-retry.json")]
    bodies += [rev_c, rev_c | {"health": "Degraded", "observedAt": "2026-07-08T13:40:00Z"}]
    bodies += [rev_c | {"health": "Healthy", "observedAt": "2026-07-08T14:10:00Z"}]
    bodies += [body("10-guestbook-rev-d.json"), body("13-guestbook-rev-e-failed.json")]
    state, decisions = None, []
    for number, b in enumerate(bodies):
        received = (b.get("observedAt") or b["operation"]["finishedAt"]).replace("Z", ".000Z")
        e = envelope_event(
            b,
            msgspec.json.encode(b),
            default_namespace="argocd",
            delivery_id=f"{number:032x}",
            received_at=received,
        )
        decisions += run(e, state=state)
        state = decisions[-1].state or state
    outcomes = [DEPLOYED, DEPLOYED, DUPLICATE, DEPLOYED, HEALTH_TRANSITION, HEALTH_TRANSITION]
    assert [d.outcome for d in decisions] == [*outcomes, DEPLOYED, DEPLOYED]
    assert [(r["kind"], r["seconds"]) for r in findings(decisions)] == [
        ("lead_time", 7200.0),
        ("change_failure", None),
        ("recovery", 1800.0),
        ("change_failure", None),
    ]
    assert state is not None
    got = dora.keys([state["dora"]], now=epoch("2026-07-12T12:48:03Z")).as_json()
    assert (got["deployments"], got["failed_deployments"], got["change_failure_rate"]) == (
        5,
        2,
        0.4,
    )
    assert (got["window_days"], got["deployments_per_day"]) == (6.148866, 0.813158)
    assert got["unrecovered_failures"] == 1
