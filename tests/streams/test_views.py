"""The query API's pure parts: ``/dora``'s parameters, its answer's body and the 404's message."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from streams.domain import dora
from streams.views import (
    BadDoraQuery,
    DoraQuery,
    _read_part,
    app_dora,
    dora_answer,
    dora_query,
    no_deployments,
    project_part,
)
from tests.support import REPO

NOW = datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=UTC)
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def query(**params: str) -> DoraQuery:
    return dora_query(params, now=NOW, default_namespace="argocd")


def refused(**params: str) -> str:
    with pytest.raises(BadDoraQuery) as raised:
        query(**params)
    return str(raised.value)


def history() -> dora.History:
    """A deployment at T0 that degrades 20 minutes later, and a succeeded one at T0 + 1 day."""
    h = dora.record_deployment(
        None, delivery_id="d1", finished_at=T0, phase="Succeeded", revision="a"
    )
    h = dora.record_health(h, "Degraded", T0 + timedelta(minutes=20))
    return dora.record_deployment(
        h, delivery_id="d2", finished_at=T0 + timedelta(days=1), phase="Succeeded", revision="b"
    )


def test_an_app_query_names_the_app_and_until_defaults_to_now_in_whole_milliseconds() -> None:
    asked = query(app="shop/cart")
    assert asked == DoraQuery(
        app="shop/cart", project=None, since=None, until=NOW.replace(microsecond=123000)
    )


def test_a_bare_app_name_is_in_the_default_namespace_as_for_apps() -> None:
    assert query(app="guestbook").app == "argocd/guestbook"


def test_a_project_query_reads_since_and_until_in_any_offset_as_utc() -> None:
    asked = query(
        project="payments", since="2026-11-01T02:00:00+02:00", until="2026-12-01T00:00:00Z"
    )
    assert asked.project == "payments" and asked.app is None
    assert asked.since == datetime(2026, 11, 1, tzinfo=UTC)
    assert asked.until == datetime(2026, 12, 1, tzinfo=UTC)
    assert asked.since.tzinfo is UTC


@pytest.mark.parametrize(
    "params",
    [{}, {"app": "a/b", "project": "p"}, {"app": "", "project": ""}],
    ids=["neither", "both", "both-empty"],
)
def test_exactly_one_of_app_and_project_is_required(params: dict[str, str]) -> None:
    assert refused(**params) == "give exactly one of app=<namespace>/<name> or project=<project>"


@pytest.mark.parametrize("app", ["a/b/c", "/b", "a/"])
def test_an_app_that_is_not_namespace_slash_name_is_refused(app: str) -> None:
    assert refused(app=app) == f"app={app!r} is not <namespace>/<name>"


@pytest.mark.parametrize("name", ["since", "until"])
@pytest.mark.parametrize("value", ["yesterday", "", "2026-13-01T00:00:00Z"])
def test_a_time_that_does_not_parse_is_refused_naming_the_parameter(name: str, value: str) -> None:
    reason = refused(project="p", **{name: value})
    assert reason.startswith(f"{name}={value!r} is not an RFC 3339 time")


@pytest.mark.parametrize(
    ("since", "until"),
    [("2026-12-01T00:00:00Z", "2026-12-01T00:00:00Z"), ("2026-12-02T00:00:00Z", None)],
    ids=["equal", "since-after-the-default-until"],
)
def test_since_at_or_after_until_is_refused(since: str, until: str | None) -> None:
    params = {"since": since} | ({"until": until} if until else {})
    reason = refused(app="a/b", **params)
    assert re.fullmatch(r"since \(2026-12-0\dT00:00:00.000Z\) must be before until \(.*\)", reason)


def test_the_peers_are_asked_the_very_range_of_the_project_query() -> None:
    asked = query(project="payments", since="2026-11-01T00:00:00.5+01:00")
    later = NOW + timedelta(seconds=3)  # a peer's clock, or the time the request reaches it
    assert dora_query(asked.peer_params(), now=later, default_namespace="x") == asked
    all_time = query(project="payments")
    assert dora_query(all_time.peer_params(), now=later, default_namespace="x") == all_time


def test_the_answer_for_an_app_is_its_keys_after_its_name() -> None:
    asked = query(app="shop/cart")
    keys = app_dora(asked, {"app": "cart", "dora": history()}, 3600.0)
    assert keys == dora.keys([history()], now=asked.until)
    status, body = dora_answer(asked, keys)
    assert status == 200
    assert list(body) == ["app", *keys.as_json()]
    assert body["app"] == "shop/cart" and body["failed_deployments"] == 1
    assert "incomplete" not in body


def test_the_failure_window_is_the_one_asked_for() -> None:
    asked = query(app="shop/cart")
    assert app_dora(asked, {"dora": history()}, 3600.0).failed_deployments == 1
    narrow = app_dora(asked, {"dora": history()}, 600.0)  # the Degraded came 20 min after
    assert narrow.failed_deployments == 0 and narrow.failure_window_seconds == 600.0


def test_a_project_answer_lists_the_workers_that_did_not_answer_with_206() -> None:
    asked = query(project="shop")
    keys = dora.keys([history()], now=asked.until)
    status, body = dora_answer(asked, keys, ["http://w2:6066", "http://w1:6066"])
    assert status == 206
    assert body["project"] == "shop" and "app" not in body
    assert body["incomplete"] == ["http://w1:6066", "http://w2:6066"]


def test_an_app_without_a_dora_history_has_no_deployments_and_the_message_names_it() -> None:
    asked = query(app="shop/cart")
    with pytest.raises(dora.NoDeployments):
        app_dora(asked, {"app": "cart"}, 3600.0)
    assert no_deployments(asked) == "no deployment recorded for app 'shop/cart'"
    assert no_deployments(query(project="ops")) == (
        "no deployment recorded for any app of project 'ops'"
    )


def test_a_workers_part_holds_its_own_apps_of_the_project_only() -> None:
    mine, elsewhere = (
        history(),
        dora.record_deployment(None, delivery_id="z", finished_at=T0, phase="Failed", revision="z"),
    )

    def raw(project: str, partition: int, **more: Any) -> bytes:
        return orjson.dumps({"project": project, "partition": partition, **more})

    raws = [
        raw("shop", 1, dora=mine),
        raw("shop", 2, dora=elsewhere),  # a partition of another worker (a standby)
        raw("ops", 1, dora=elsewhere, last_operation={"project": "shop"}),
        raw("shop", 1),  # no deployment yet
        b"not json",
    ]
    asked = query(project="shop")
    part = project_part(raws, {1, 3}, asked, 3600.0)
    assert part == dora.partial([mine], now=asked.until)
    assert part["apps"] == 1 and part["deployments"] == 2


def test_a_peer_answer_that_is_not_a_partial_is_refused() -> None:
    part = dora.partial([history()], now=NOW)
    assert _read_part(orjson.loads(orjson.dumps({"project": "p", "partial": part}))) == part
    with pytest.raises(ValueError, match=r"not a dora\.partial"):
        _read_part({"partial": {"apps": 1}})
    with pytest.raises(KeyError):
        _read_part({"apps": 1})


def _documented_answer() -> dict[str, Any]:
    """The JSON example of docs/dora.md's "The query API"."""
    text = (REPO / "docs" / "dora.md").read_text()
    section = text.split("## The query API", 1)[1].split("\n## ", 1)[0]
    return dict(orjson.loads(section.split("```json", 1)[1].split("```", 1)[0]))


def test_the_answer_has_exactly_the_fields_the_docs_show_in_their_order() -> None:
    asked = query(app="guestbook/guestbook", since="2026-11-01T00:00:00Z")
    _, body = dora_answer(asked, dora.keys([history()], asked.since, asked.until, now=NOW))
    documented = _documented_answer()
    assert list(body) == list(documented)
    for field in ("recovery_time_seconds", "lead_time_seconds", "levels"):
        assert list(body[field]) == list(documented[field]), field
