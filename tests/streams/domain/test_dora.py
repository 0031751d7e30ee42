"""The DORA keys (docs/dora.md) on hand-made sequences of deployments and health transitions."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.bridge.events import envelope_event
from streams.domain import dora
from streams.domain.decide import decide
from streams.domain.dora import (
    DAY,
    HOUR,
    History,
    Keys,
    NoDeployments,
    commits_of,
    deployment_args,
    keys,
    levels,
    new_history,
    record_deployment,
    record_health,
    revisions_of,
)
from tests.support import REPO

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    """``minutes`` after T0."""
    return T0 + timedelta(minutes=minutes)


class App:
    """Builds one app's history fact by fact, as the worker would, and collects its changes."""

    def __init__(self, *, limit: int = 1000, window_s: float = HOUR) -> None:
        self.history: History = new_history()
        self.limit = limit
        self.window_s = window_s
        self.n = 0
        self.events: list[dict[str, Any]] = []

    def _apply(self, after: History) -> None:
        self.events += dora.changes(self.history, after, failure_window_s=self.window_s)
        self.history = after

    def deploy(
        self,
        minutes: float,
        revision: str = "",
        *,
        phase: str = "Succeeded",
        rollback: bool = False,
        health: str | None = "Progressing",
        revisions: Sequence[str] = (),
        commits: dict[str, datetime] | None = None,
    ) -> App:
        self.n += 1
        self._apply(
            record_deployment(
                self.history,
                delivery_id=f"d{self.n}",
                finished_at=at(minutes),
                phase=phase,
                revision=revision or f"rev{self.n}",
                revisions=revisions,
                rollback=rollback,
                health=health,
                commits=commits,
                limit=self.limit,
                failure_window_s=self.window_s,
            )
        )
        return self

    def health(self, minutes: float, health: str) -> App:
        self._apply(
            record_health(self.history, health, at(minutes), failure_window_s=self.window_s)
        )
        return self

    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.events]

    def keys(self, since: float | None = None, until: float | None = None, **kw: Any) -> Keys:
        return keys(
            [self.history],
            at(since) if since is not None else None,
            at(until) if until is not None else None,
            now=kw.pop("now", at(100_000)),
            failure_window_s=kw.pop("failure_window_s", self.window_s),
        )


# -- deployments and change failures ---------------------------------------------------------


def test_succeeded_and_failed_operations_are_counted_apart() -> None:
    k = App().deploy(0).deploy(10, phase="Failed").deploy(20).deploy(30, phase="Error").keys()
    assert (k.deployments, k.succeeded, k.failed) == (4, 2, 2)


@pytest.mark.parametrize("phase", ["Failed", "Error", "Errored"])
def test_a_failed_or_errored_operation_is_a_change_failure(phase: str) -> None:
    k = App().deploy(0).deploy(10, phase=phase).deploy(2000).keys()
    assert k.failed_deployments == 1
    assert k.change_failure_rate == pytest.approx(1 / 3)


def test_a_deployment_rolled_back_within_the_window_is_a_change_failure() -> None:
    app = App().deploy(0, "a").deploy(100, "b").deploy(130, "a", rollback=True)
    k = app.keys()
    assert k.failed_deployments == 1  # b; the rollback itself is fine
    verdicts = dora._verdicts(app.history, HOUR)
    assert [v.rolled_back for v in verdicts] == [False, True, False]


def test_a_rollback_after_the_window_fails_nothing() -> None:
    k = App().deploy(0, "a").deploy(100, "b").deploy(100 + 61, "a", rollback=True).keys()
    assert k.failed_deployments == 0


def test_a_degraded_transition_inside_the_window_is_a_change_failure() -> None:
    k = App().deploy(0).health(59, "Degraded").keys()
    assert k.failed_deployments == 1


def test_a_degraded_transition_after_the_window_is_not_a_change_failure() -> None:
    k = App().deploy(0).health(60, "Degraded").keys()  # exactly an hour: outside [0, 1 h)
    assert k.failed_deployments == 0
    assert k.recovery_time_seconds.count == 0 and k.unrecovered_failures == 0


def test_the_failure_window_is_a_parameter() -> None:
    app = App(window_s=2 * HOUR).deploy(0).health(90, "Degraded")
    assert app.keys().failed_deployments == 1
    assert app.keys(failure_window_s=HOUR).failed_deployments == 0


def test_a_degraded_transition_after_the_next_deployment_belongs_to_that_one() -> None:
    app = App().deploy(0).deploy(10).health(20, "Degraded")
    assert [v.change_failure for v in dora._verdicts(app.history, HOUR)] == [False, True]


def test_a_deployment_reported_degraded_is_a_change_failure() -> None:
    k = App().deploy(0).deploy(10, health="Degraded").keys()
    assert k.failed_deployments == 1


def test_a_deployment_failing_by_several_rules_counts_once() -> None:
    app = App().deploy(0, "a").deploy(10, "b", phase="Failed").health(11, "Degraded")
    k = app.deploy(20, "a", rollback=True).keys()
    assert k.failed_deployments == 1


# -- recovery --------------------------------------------------------------------------------


def test_recovery_ends_at_the_next_succeeded_deployment() -> None:
    k = App().deploy(0).deploy(10, phase="Failed").deploy(40).keys()
    assert k.recovery_time_seconds.count == 1
    assert k.recovery_time_seconds.median == 30 * 60
    assert k.unrecovered_failures == 0


def test_recovery_ends_at_the_return_to_healthy_when_that_comes_first() -> None:
    app = App().deploy(0).health(5, "Degraded").health(25, "Healthy").deploy(60)
    k = app.keys()
    assert (k.failed_deployments, k.recovery_time_seconds.max) == (1, 20 * 60)


def test_recovery_ends_at_the_deployment_when_it_comes_before_healthy() -> None:
    app = App().deploy(0).health(5, "Degraded").deploy(15).health(25, "Healthy")
    assert app.keys().recovery_time_seconds.max == 10 * 60


def test_a_deployment_that_degrades_in_its_window_does_not_recover() -> None:
    app = App().deploy(0).deploy(10, phase="Failed").deploy(20).health(30, "Degraded")
    k = app.deploy(50).keys()
    # the failure at 10 runs on through 20 (degraded at 30) until 50; one episode
    assert k.failed_deployments == 2
    assert k.recovery_time_seconds.count == 1
    assert k.recovery_time_seconds.max == 40 * 60


def test_a_failed_deployment_does_not_recover() -> None:
    k = App().deploy(0, phase="Failed").deploy(10, phase="Failed").deploy(15).keys()
    assert k.recovery_time_seconds.max == 15 * 60


def test_failures_in_a_row_are_one_episode_counted_from_the_first() -> None:
    k = App().deploy(0, phase="Failed").deploy(10, phase="Error").deploy(30).keys()
    assert k.failed_deployments == 2
    assert k.recovery_time_seconds.count == 1
    assert k.recovery_time_seconds.max == 30 * 60


def test_recovery_from_a_degraded_transition_starts_at_the_transition() -> None:
    k = App().deploy(0).health(20, "Degraded").deploy(50).keys()
    assert k.recovery_time_seconds.max == 30 * 60


def test_a_rollback_recovers_the_deployment_it_rolls_back() -> None:
    k = App().deploy(0, "a").deploy(10, "b").deploy(25, "a", rollback=True).keys()
    assert k.recovery_time_seconds.max == 15 * 60


def test_a_failure_not_recovered_yet_is_counted_apart() -> None:
    k = App().deploy(0).deploy(10, phase="Failed").keys()
    assert k.recovery_time_seconds.count == 0
    assert k.recovery_time_seconds.median is None
    assert k.unrecovered_failures == 1


def test_healthy_without_an_open_failure_changes_nothing() -> None:
    k = App().deploy(0).health(5, "Healthy").health(7, "Progressing").keys()
    assert (k.failed_deployments, k.recovery_time_seconds.count) == (0, 0)


# -- lead time -------------------------------------------------------------------------------


def test_lead_time_runs_from_the_commit_to_the_deployment_finish() -> None:
    k = App().deploy(0, "a", commits={"a": at(-90)}).keys()
    assert k.lead_time_seconds.count == 1
    assert k.lead_time_seconds.median == 90 * 60


def test_no_commit_no_lead_time() -> None:
    k = App().deploy(0, "a").deploy(10, "b").keys()
    assert k.lead_time_seconds.count == 0
    assert k.lead_time_seconds.median is None
    assert k.levels["lead_time"] is None


def test_lead_time_is_taken_at_the_first_succeeded_deployment_of_the_revision() -> None:
    app = App().deploy(0, "a", phase="Failed", commits={"a": at(-10)})
    app.deploy(5, "a", commits={"a": at(-10)}).deploy(30, "a", commits={"a": at(-10)})
    k = app.keys()
    assert k.lead_time_seconds.count == 1
    assert k.lead_time_seconds.max == 15 * 60


def test_a_rollback_adds_no_lead_time() -> None:
    app = App().deploy(0, "a", commits={"a": at(-10)}).deploy(5, "b", commits={"b": at(-5)})
    k = app.deploy(10, "a", rollback=True, commits={"a": at(-10)}).keys()
    assert k.lead_time_seconds.count == 2


def test_a_commit_dated_after_the_deployment_counts_zero() -> None:
    k = App().deploy(0, "a", commits={"a": at(3)}).keys()
    assert k.lead_time_seconds.max == 0


def test_multi_source_gives_one_lead_time_per_newly_deployed_revision() -> None:
    commits = {"a1": at(-60), "b1": at(-30), "b2": at(20)}
    app = App().deploy(0, revisions=["a1", "b1"], commits=commits)
    app.deploy(30, revisions=["a1", "b2"], commits=commits)  # only b2 is new
    lead = [d[dora.LEAD] for d in app.history["deployments"]]
    assert lead == [{"a1": 3600.0, "b1": 1800.0}, {"b2": 600.0}]
    assert app.keys().lead_time_seconds.count == 3


def test_revisions_of_prefers_the_multi_source_list() -> None:
    assert revisions_of("", ["b", "a", "b"]) == ["a", "b"]
    assert revisions_of("abc", []) == ["abc"]
    assert revisions_of("", []) == []


# -- the range ---------------------------------------------------------------------------------


def test_since_and_until_select_deployments_by_finish_time_half_open() -> None:
    app = App().deploy(0).deploy(DAY / 60, phase="Failed").deploy(2 * DAY / 60)
    k = app.keys(since=0, until=2 * DAY / 60)
    assert (k.deployments, k.failed_deployments) == (2, 1)
    assert k.window_days == 2
    assert k.deployments_per_day == 1
    assert k.as_json()["since"] == "2026-11-02T09:00:00.000Z"


def test_all_time_runs_from_the_first_deployment_to_now() -> None:
    k = App().deploy(0).deploy(60).keys(now=at(4 * DAY / 60))
    assert k.window_days == 4 and k.deployments_per_day == 0.5


def test_a_window_shorter_than_a_day_counts_as_a_day() -> None:
    k = App().deploy(0).deploy(1).deploy(2).keys(now=at(3))
    assert k.deployments_per_day == 3


def test_recovery_is_counted_in_the_range_of_its_failure() -> None:
    app = App().deploy(0, phase="Failed").deploy(30)
    assert app.keys(since=20).recovery_time_seconds.count == 0
    assert app.keys(until=20).recovery_time_seconds.count == 1


def test_a_range_without_deployments_gives_zero_counts_and_no_rates() -> None:
    k = App().deploy(0).keys(since=10, until=20)
    assert (k.deployments, k.change_failure_rate) == (0, None)
    assert k.levels == {
        "deployment_frequency": "low",
        "lead_time": None,
        "change_failure_rate": None,
        "recovery_time": None,
    }


def test_an_app_without_deployments_is_an_error() -> None:
    with pytest.raises(NoDeployments):
        keys([new_history()], now=T0)
    with pytest.raises(NoDeployments):
        keys([None], now=T0)
    with pytest.raises(NoDeployments):
        keys([], now=T0)


def test_since_must_be_before_until() -> None:
    with pytest.raises(ValueError, match="before"):
        App().deploy(0).keys(since=10, until=10)


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        record_deployment(
            None, delivery_id="x", finished_at=datetime(2026, 1, 1), phase="Succeeded", revision="a"
        )


# -- projects --------------------------------------------------------------------------------


def test_a_project_sums_its_apps_and_keeps_their_episodes_apart() -> None:
    web = App().deploy(0, phase="Failed").deploy(10)
    api = App().deploy(5, "x", commits={"x": at(0)}).health(6, "Degraded").deploy(30)
    k = keys([web.history, api.history, None], now=at(DAY / 60))
    assert (k.deployments, k.failed_deployments) == (4, 2)
    assert k.change_failure_rate == 0.5
    assert k.recovery_time_seconds.count == 2
    assert k.recovery_time_seconds.max == 24 * 60
    assert k.recovery_time_seconds.mean == (10 * 60 + 24 * 60) / 2
    assert k.lead_time_seconds.count == 1


# -- levels (2023 report) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("per_day", "level"),
    [(3, "elite"), (1, "elite"), (0.99, "high"), (1 / 7, "high"), (0.1, "medium"), (0.02, "low")],
)
def test_deployment_frequency_levels(per_day: float, level: str) -> None:
    got = levels(
        deployments_per_day=per_day,
        lead_time_median=None,
        change_failure_rate=None,
        recovery_time_median=None,
    )
    assert got["deployment_frequency"] == level


@pytest.mark.parametrize(
    ("rate", "level"),
    [
        (0.0, "elite"),
        (0.05, "elite"),
        (0.051, "high"),
        (0.10, "high"),
        (0.15, "medium"),
        (0.2, "low"),
    ],
)
def test_change_failure_rate_levels(rate: float, level: str) -> None:
    got = levels(
        deployments_per_day=None,
        lead_time_median=None,
        change_failure_rate=rate,
        recovery_time_median=None,
    )
    assert got["change_failure_rate"] == level


@pytest.mark.parametrize(
    ("seconds", "lead", "recovery"),
    [
        (59 * 60, "elite", "elite"),
        (HOUR, "elite", "high"),
        (DAY - 1, "elite", "high"),
        (DAY, "high", "medium"),
        (7 * DAY, "medium", "low"),
        (30 * DAY, "low", "low"),
    ],
)
def test_lead_and_recovery_time_levels(seconds: float, lead: str, recovery: str) -> None:
    got = levels(
        deployments_per_day=None,
        lead_time_median=seconds,
        change_failure_rate=None,
        recovery_time_median=seconds,
    )
    assert (got["lead_time"], got["recovery_time"]) == (lead, recovery)


def test_levels_use_the_medians() -> None:
    app = App().deploy(0, "a", commits={"a": at(-30)}).deploy(10, "b", commits={"b": at(-3000)})
    app.deploy(20, "c", commits={"c": at(-40)})
    k = app.keys(now=at(DAY / 60))
    assert k.lead_time_seconds.median == 60 * 60  # of 30 min, 60 min and 50 h
    assert k.levels["lead_time"] == "elite"


# -- the stored history ------------------------------------------------------------------------


def test_the_same_deployment_twice_changes_nothing() -> None:
    app = App().deploy(0)
    again = record_deployment(
        app.history,
        delivery_id="d1",
        finished_at=at(5),
        phase="Failed",
        revision="zzz",
    )
    assert again == app.history


def test_the_same_health_transition_twice_changes_nothing() -> None:
    app = App().deploy(0).health(5, "Degraded")
    assert record_health(app.history, "Degraded", at(5)) == app.history


def test_a_transition_before_every_deployment_is_not_kept() -> None:
    assert record_health(None, "Degraded", T0) == new_history()
    app = App().deploy(10)
    assert record_health(app.history, "Degraded", at(5)) == app.history


def test_recording_never_modifies_its_argument() -> None:
    app = App(limit=2).deploy(0).health(3, "Degraded").deploy(5, phase="Failed")
    before = copy.deepcopy(app.history)
    record_deployment(
        app.history, delivery_id="n", finished_at=at(9), phase="Succeeded", revision="r", limit=2
    )
    record_health(app.history, "Healthy", at(4))
    assert app.history == before


def test_the_history_is_plain_json() -> None:
    app = App(limit=3).deploy(0, "a", commits={"a": at(-1)}).health(1, "Degraded")
    app.deploy(5, phase="Failed").deploy(9).deploy(12).health(13, "Healthy")
    assert orjson.loads(orjson.dumps(app.history)) == app.history


def test_a_settled_deployment_keeps_a_digest_of_its_id_and_is_still_recognised() -> None:
    app = App().deploy(0, "a", commits={"a": at(-5)}).deploy(10).deploy(20).deploy(30)
    oldest = app.history["deployments"][0]
    assert oldest[dora.ID] == dora.digest("d1") and oldest[dora.LEAD] == [300.0]
    again = record_deployment(
        app.history, delivery_id="d1", finished_at=at(40), phase="Failed", revision="zzz"
    )
    assert again == app.history
    # the new one, the newest and the newest before it keep their ids for the events
    assert [d[dora.ID] for d in app.history["deployments"][-2:]] == ["d3", "d4"]


def test_a_kept_deployment_with_a_git_sha_stays_small() -> None:
    sha = "c80b448e6a3c4f1f8a4f3b4a2a9d0e1f2b3c4d5e"
    app = App(limit=30)
    for n in range(40):
        app.deploy(10 * n, f"{sha[:-2]}{n:02d}", commits={f"{sha[:-2]}{n:02d}": at(10 * n - 60)})
    settled = app.history["deployments"][:-3]
    assert len(app.history["deployments"]) == 30
    assert max(len(orjson.dumps(d)) for d in settled) <= 50
    assert len(orjson.dumps(app.history)) < 2000


def test_a_deployment_arriving_late_is_kept_in_time_order() -> None:
    app = App().deploy(10).deploy(0)
    assert [d[dora.AT] for d in app.history["deployments"]] == [
        at(0).timestamp(),
        at(10).timestamp(),
    ]


def test_a_bounded_history_keeps_all_time_counts_exact() -> None:
    def run(app: App) -> App:
        app.deploy(0, "a", commits={"a": at(-100)}).deploy(10, "b", phase="Failed")
        app.deploy(20, "c", commits={"c": at(0)}).health(30, "Degraded").health(40, "Healthy")
        app.deploy(100, "d").deploy(110, "c", rollback=True).deploy(200, "e", phase="Error")
        return app.deploy(300, "f").deploy(400, "g")

    small, large = run(App(limit=2)), run(App())
    assert len(small.history["deployments"]) == 2
    assert dora.folded_of(small.history)["deployments"] == 6
    a, b = small.keys(), large.keys()
    assert (a.deployments, a.succeeded, a.failed_deployments, a.deployments_per_day) == (
        b.deployments,
        b.succeeded,
        b.failed_deployments,
        b.deployments_per_day,
    )
    pairs = [
        (a.recovery_time_seconds, b.recovery_time_seconds),
        (a.lead_time_seconds, b.lead_time_seconds),
    ]
    for x, y in pairs:
        assert (x.count, x.mean, x.max) == (y.count, y.mean, y.max)
        assert x.estimated and not y.estimated
    assert a.complete and b.complete


def test_a_range_cutting_into_the_folded_deployments_is_incomplete() -> None:
    app = App(limit=2).deploy(0).deploy(10).deploy(20).deploy(30)
    assert not app.keys(since=5).complete
    assert app.keys(since=20).complete
    assert app.keys(since=20).deployments == 2


def test_a_failure_open_when_its_deployment_is_folded_is_recovered_later() -> None:
    app = App(limit=2).deploy(0, phase="Failed").deploy(10, phase="Failed")
    app.deploy(20, phase="Failed")
    assert dora.folded_of(app.history)["open_since"] == at(0).timestamp()
    assert app.keys().unrecovered_failures == 1
    app.deploy(25).deploy(30).deploy(35)
    assert dora.folded_of(app.history)["open_since"] is None
    assert dora.folded_of(app.history)["recovery"]["count"] == 1
    k = app.keys()
    assert k.recovery_time_seconds.count == 1 and k.recovery_time_seconds.max == 25 * 60
    assert k.unrecovered_failures == 0


def test_estimated_quantiles_stay_inside_the_bucket_and_under_the_max() -> None:
    stats = dora._empty_stats()
    for value in (100.0, 200.0, 250.0):  # all in the 5-15 min bucket... and two below it
        dora._add(stats, value)
    summary = dora._merged([], stats)
    assert summary.count == 3 and summary.max == 250.0 and summary.estimated
    assert summary.median is not None and 60.0 <= summary.median <= 250.0
    assert summary.p90 is not None and summary.median <= summary.p90 <= 250.0


# -- from the worker's records -------------------------------------------------------------------


def test_deployment_args_read_a_deployment_record() -> None:
    record = {
        "delivery_id": "abc",
        "revision": "",
        "revisions": ["r1", "r2"],
        "rollback": True,
        "health": "Healthy",
        "operation": {"phase": "Failed", "finished_at": "2026-11-02T09:05:00Z"},
        "received_at": "2026-11-02T09:05:01.200Z",
    }
    args = deployment_args(record)
    assert args == {
        "delivery_id": "abc",
        "finished_at": at(5),
        "phase": "Failed",
        "revision": "",
        "revisions": ["r1", "r2"],
        "rollback": True,
        "health": "Healthy",
    }
    bare = {**record, "operation": {"phase": "Succeeded", "finished_at": None}}
    assert deployment_args(bare)["finished_at"] == at(5) + timedelta(seconds=1.2)
    history = record_deployment(None, **args)
    assert history["deployments"][0][dora.REVISIONS] == [dora.digest("r1"), dora.digest("r2")]


def test_commits_of_reads_the_envelope_commit_object() -> None:
    commit = {"revision": "abc", "date": "2026-11-02T08:00:00+01:00", "author": "x"}
    assert commits_of(commit) == {"abc": at(-120)}
    assert commits_of([commit, {"revision": "d", "date": "not a date"}]) == {"abc": at(-120)}
    assert commits_of(None) == {}


# -- properties ----------------------------------------------------------------------------------

facts = st.lists(
    st.one_of(
        st.tuples(
            st.just("deploy"),
            st.integers(0, 120),  # minutes since the previous fact
            st.sampled_from(["Succeeded", "Succeeded", "Failed", "Error"]),
            st.booleans(),
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from([None, "Healthy", "Progressing", "Degraded"]),
        ),
        st.tuples(st.just("health"), st.integers(0, 120), st.sampled_from(["Degraded", "Healthy"])),
    ),
    max_size=25,
)


def _play(sequence: list[tuple[Any, ...]], limit: int, *, times: int = 1) -> App:
    """Apply the facts in order (each ``times`` times, as a redelivery would)."""
    app = App(limit=limit)
    minutes = deployed = 0
    for fact in sequence:
        minutes += fact[1]
        if fact[0] == "deploy":
            deployed += 1
        for _ in range(times):
            if fact[0] == "deploy":
                _, _, phase, rollback, revision, health = fact
                app.n = deployed - 1  # the same delivery id each time
                app.deploy(
                    minutes,
                    revision,
                    phase=phase,
                    rollback=rollback,
                    health=health,
                    commits={revision: at(minutes - 30)},
                )
            else:
                app.health(minutes, fact[2])
    return app


@settings(max_examples=300, deadline=None)
@given(facts, st.integers(2, 6))
def test_counts_stay_consistent_and_folding_keeps_them(
    sequence: list[tuple[Any, ...]], limit: int
) -> None:
    large = _play(sequence, 1000)
    if not large.history["deployments"]:
        return
    small = _play(sequence, limit)
    a, b = small.keys(), large.keys()
    for k in (a, b):
        assert 0 <= k.failed_deployments <= k.deployments
        assert k.succeeded + k.failed == k.deployments
        assert k.change_failure_rate is not None and 0 <= k.change_failure_rate <= 1
        assert k.recovery_time_seconds.count + k.unrecovered_failures <= k.failed_deployments
        assert k.unrecovered_failures <= 1
        assert k.lead_time_seconds.count <= k.succeeded
    assert (a.deployments, a.succeeded, a.failed_deployments, a.unrecovered_failures) == (
        b.deployments,
        b.succeeded,
        b.failed_deployments,
        b.unrecovered_failures,
    )
    x, y = a.recovery_time_seconds, b.recovery_time_seconds
    assert (x.count, x.max) == (y.count, y.max)
    assert x.mean == pytest.approx(y.mean)
    # the checkpoint kept for changes() is where a full walk stands
    for app in (small, large):
        assert app.history["settled"] == dora._settle(app.history, HOUR)
    # a folded history forgets which revisions its folded deployments ran: one deployed again
    # (not as a rollback) after its deployment was folded gets a second lead time
    assert a.lead_time_seconds.count >= b.lead_time_seconds.count


@settings(max_examples=200, deadline=None)
@given(facts)
def test_applying_every_fact_twice_changes_nothing(sequence: list[tuple[Any, ...]]) -> None:
    assert _play(sequence, 4, times=2).history == _play(sequence, 4).history


# -- the exporter's events -------------------------------------------------------------------------


def test_a_failed_operation_is_reported_when_it_arrives() -> None:
    app = App().deploy(0).deploy(10, phase="Failed")
    assert app.events == [
        {
            "kind": "change_failure",
            "deployment": "d2",
            "at": "2026-11-02T09:10:00.000Z",
            "reason": "operation",
        }
    ]


def test_a_rollback_or_a_degraded_transition_reports_the_failure_of_the_deployment_before() -> None:
    app = App().deploy(0, "a").deploy(10, "b").deploy(20, "a", rollback=True)
    assert [(e["deployment"], e["reason"]) for e in app.events] == [("d2", "rollback")]
    app = App().deploy(0).health(5, "Degraded").health(6, "Degraded")
    assert [(e["kind"], e["at"], e["reason"]) for e in app.events] == [
        ("change_failure", "2026-11-02T09:05:00.000Z", "degraded")
    ]


def test_lead_times_are_reported_with_their_deployment() -> None:
    app = App().deploy(0, revisions=["a", "b"], commits={"a": at(-1), "b": at(-2)})
    assert [(e["revision"], e["seconds"]) for e in app.events] == [("a", 60.0), ("b", 120.0)]


def test_a_recovery_by_healthy_is_reported_at_once() -> None:
    app = App().deploy(0).health(5, "Degraded").health(15, "Healthy")
    assert app.events[-1] == {
        "kind": "recovery",
        "episode": 0,
        "started_at": "2026-11-02T09:05:00.000Z",
        "at": "2026-11-02T09:15:00.000Z",
        "seconds": 600.0,
    }


def test_a_recovery_by_a_deployment_is_reported_once_no_degraded_can_take_it_back() -> None:
    app = App().deploy(0, phase="Failed").deploy(10)
    assert app.kinds() == ["change_failure"]  # the deployment at 10 may still degrade
    app.health(40, "Progressing")
    assert app.kinds() == ["change_failure"]
    app.health(70, "Progressing")  # an hour after it: final
    assert app.kinds() == ["change_failure", "recovery"]
    assert app.events[-1]["seconds"] == 600.0


def test_a_recovery_taken_back_by_a_degraded_transition_is_never_reported() -> None:
    app = App().deploy(0, phase="Failed").deploy(10).health(30, "Degraded").deploy(50)
    assert app.kinds() == ["change_failure", "change_failure"]
    app.deploy(60)
    assert app.kinds()[-1] == "recovery" and app.events[-1]["seconds"] == 50 * 60


@settings(max_examples=300, deadline=None)
@given(facts, st.integers(2, 6))
def test_the_events_of_every_fact_add_up_to_the_keys(
    sequence: list[tuple[Any, ...]], limit: int
) -> None:
    app = _play(sequence, limit)
    if not app.history["deployments"]:
        return
    app.health(len(sequence) * 200 + 1000, "Unknown")  # settles every recovery
    k = app.keys()
    failures = [e for e in app.events if e["kind"] == "change_failure"]
    recoveries = [e for e in app.events if e["kind"] == "recovery"]
    leads = [e for e in app.events if e["kind"] == "lead_time"]
    assert len(failures) == k.failed_deployments
    assert len({e["deployment"] for e in failures}) == len(failures)
    assert len(recoveries) == k.recovery_time_seconds.count
    assert [e["episode"] for e in recoveries] == list(range(len(recoveries)))
    if recoveries:
        assert max(e["seconds"] for e in recoveries) == k.recovery_time_seconds.max
    assert len(leads) == k.lead_time_seconds.count


def test_partial_answers_combine_into_the_project_keys() -> None:
    web = App().deploy(0, phase="Failed").deploy(10, "w", commits={"w": at(-5)})
    api = App().deploy(5, "x", commits={"x": at(0)}).health(6, "Degraded").deploy(30)
    now = at(DAY / 60)
    parts = [dora.partial([h], now=now) for h in (web.history, api.history, new_history())]
    wire = orjson.loads(orjson.dumps(parts))  # as one worker sends them to another
    assert dora.combine(wire, now=now) == keys([web.history, api.history], now=now)
    with pytest.raises(NoDeployments):
        dora.combine([dora.partial([None], now=now)], now=now)


# -- the worked example of docs/dora.md: the example payloads through decide ----------------------


def test_the_worked_example_of_the_docs() -> None:
    """guestbook's example payloads through the worker's decisions, plus two transitions."""

    def utc(text: str) -> datetime:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))

    commits = {"00c875f3417734f356f3fdfad5949f6c01267c67": utc("2026-07-07T12:03:05Z")}
    files = ["01-guestbook-rev-a", "03-guestbook-rev-b", "04-guestbook-rev-b-retry"]
    files += ["07-guestbook-rev-c", "10-guestbook-rev-d", "13-guestbook-rev-e-failed"]
    state: dict[str, Any] | None = None
    history: History | None = None
    outcomes = []
    for number, name in enumerate(files):
        raw = (REPO / "examples" / "payloads" / f"{name}.json").read_bytes()
        body = orjson.loads(raw)
        received = body["operation"]["finishedAt"]
        event = envelope_event(
            body,
            raw,
            default_namespace="argocd",
            delivery_id=f"{number:032x}",
            received_at=received,
        )
        decision = decide(event, state, [], now=utc(received))
        outcomes.append(decision.outcome)
        state = decision.state or state
        if decision.deployment is not None:
            history = record_deployment(
                history, **deployment_args(decision.deployment), commits=commits
            )
        if name.startswith("07"):  # rev c degrades 24 min after it finished, recovers at 14:10
            history = record_health(history, "Degraded", utc("2026-07-08T13:40:00Z"))
            history = record_health(history, "Healthy", utc("2026-07-08T14:10:00Z"))
    assert outcomes == ["deployed", "deployed", "duplicate", "deployed", "deployed", "deployed"]
    got = keys([history], now=utc("2026-07-12T12:48:03Z")).as_json()
    assert got == {
        "since": None,
        "until": "2026-07-12T12:48:03.000Z",
        "window_days": 6.148866,  # from rev a's finish, 2026-07-06T09:13:41Z
        "deployments": 5,
        "succeeded": 4,
        "failed": 1,
        "failed_deployments": 2,  # rev c (Degraded), rev e (Failed)
        "change_failure_rate": 0.4,
        "recovery_time_seconds": {
            "count": 1,
            "median": 1800.0,
            "p90": 1800.0,
            "mean": 1800.0,
            "max": 1800.0,
            "estimated": False,
        },
        "unrecovered_failures": 1,  # rev e
        "lead_time_seconds": {
            "count": 1,
            "median": 7200.0,
            "p90": 7200.0,
            "mean": 7200.0,
            "max": 7200.0,
            "estimated": False,
        },
        "deployments_per_day": 0.813158,
        "levels": {
            "deployment_frequency": "high",
            "lead_time": "elite",
            "change_failure_rate": "low",
            "recovery_time": "elite",
        },
        "benchmark": "Accelerate State of DevOps 2023",
        "failure_window_seconds": 3600.0,
        "complete": True,
    }


def test_late_facts_keep_the_checkpoint_where_a_full_walk_stands() -> None:
    app = App().deploy(0, phase="Failed").deploy(30).deploy(20, "late").health(25, "Healthy")
    assert [d[dora.N] for d in app.history["deployments"]] == [1, 3, 2]  # d1, d3, d2
    assert app.history["settled"] == dora._settle(app.history, HOUR)
    k = app.keys()
    assert k.recovery_time_seconds.max == 20 * 60  # the late deployment at 20 recovered it
    assert [e["deployment"] for e in app.events if e["kind"] == "change_failure"] == ["d1"]


def test_a_deployment_later_than_the_newest_but_before_a_transition_keeps_the_checkpoint() -> None:
    app = App().deploy(0, phase="Failed").health(30, "Healthy").deploy(20)
    assert app.history["settled"] == dora._settle(app.history, HOUR)
    assert app.keys().recovery_time_seconds.max == 20 * 60


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["deploy", "Degraded", "Healthy"]),
            st.integers(0, 300),  # minutes after T0: facts arrive in any order
            st.sampled_from(["Succeeded", "Failed"]),
            st.booleans(),
        ),
        max_size=20,
    ),
    st.integers(2, 5),
)
def test_the_checkpoint_is_where_a_full_walk_stands_whatever_the_order(
    sequence: list[tuple[str, int, str, bool]], limit: int
) -> None:
    app = App(limit=limit)
    for kind, minutes, phase, rollback in sequence:
        if kind == "deploy":
            app.deploy(minutes, phase=phase, rollback=rollback)
        else:
            app.health(minutes, kind)
        if app.history["deployments"]:
            assert app.history["settled"] == dora._settle(app.history, HOUR)
            k = app.keys()
            assert 0 <= k.failed_deployments <= k.deployments
