"""The four DORA keys of an app or a project, from its announced deployments (pure).

docs/dora.md states every rule; this module is their code. An app's **DORA history** is plain
JSON that fits in the app's state (so it survives restarts and rebalances with it). The state
is rewritten at every fact, so the history is compact (lists, not objects; digests of revisions):

* ``deployments``: the most recent announced deployment operations, oldest first, at most
  ``limit`` of them (:data:`Deployment`: finish time, arrival number, flags for a failed phase,
  a rollback and a Degraded health reported with it, delivery id, revision digests, and the lead
  time of each revision it deployed first);
* ``health``: the Degraded and Healthy transitions observed since the oldest of those
  deployments (:data:`Transition`);
* ``folded``: running totals of the deployments that left the window (:func:`folded_of`
  decodes them into :class:`Folded`): exact counts, count/sum/max and bucket counts of their
  lead and recovery times, and the start of a failure that had not recovered when its
  deployment left.

:func:`record_deployment` and :func:`record_health` apply one fact and return a new history
(never modifying their argument); applying the same fact twice changes nothing. Facts are
ordered by time, and facts with the same time by arrival. :func:`keys` computes the keys over
``[since, until)`` for one app or several (a project): counts, change failure rate, recovery and
lead time summaries (:class:`Summary`), deployments per day, and DORA's performance level of
each (:func:`levels`, thresholds of the 2023 Accelerate State of DevOps report).
:func:`changes` tells what one fact changed (new change failures, lead times, final
recoveries): the events the exporter folds into counters and histograms.

The bound: a query whose range covers every folded deployment (all time, the default) adds the
folded totals, exactly for counts, rates, means and maxima; its medians and 90th percentiles are
then estimated from bucket counts (``Summary.estimated``). A range that starts or ends inside
the folded part can only be answered from the retained deployments: ``Keys.complete`` is false.

Times are aware :class:`~datetime.datetime` in the API and epoch seconds (millisecond
precision, an int when whole) in the stored history.
"""

from __future__ import annotations

import binascii
import bisect
import hashlib
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, NotRequired, TypedDict, cast

from streams.domain import timestamps

#: Deployments each app's history keeps before folding the oldest into the totals: a month of
#: an app deploying daily (DORA's elite threshold) stays exact; see docs/dora.md for the bound.
DEFAULT_LIMIT = 30
#: A Degraded transition or a rollback this long after a deployment finished still fails it.
DEFAULT_FAILURE_WINDOW_S = 3600.0
#: Health transitions kept per app at most (a flapping app must not grow its state unbounded).
HEALTH_LIMIT = 200

SUCCEEDED = "Succeeded"
DEGRADED = "Degraded"
HEALTHY = "Healthy"

MINUTE, HOUR, DAY, WEEK = 60.0, 3600.0, 86400.0, 7 * 86400.0
MONTH = 30 * DAY
#: Upper bounds (seconds) of the lead and recovery time buckets, from a minute to half a year;
#: DORA's thresholds (an hour, a day, a week, a month) are bounds, so a level is read exactly.
BUCKETS: tuple[float, ...] = (
    MINUTE,
    5 * MINUTE,
    15 * MINUTE,
    30 * MINUTE,
    HOUR,
    2 * HOUR,
    4 * HOUR,
    8 * HOUR,
    12 * HOUR,
    DAY,
    2 * DAY,
    4 * DAY,
    WEEK,
    2 * WEEK,
    MONTH,
    90 * DAY,
    180 * DAY,
)

ELITE, HIGH, MEDIUM, LOW = "elite", "high", "medium", "low"
BENCHMARK = "Accelerate State of DevOps 2023"


class NoDeployments(LookupError):
    """The app (or every app of the project) has no deployment in its history."""


# --- the stored shape ----------------------------------------------------------------------


#: A kept deployment is a JSON list ``[at, n, flags, id, revisions, lead]`` (a list, not an object:
#: it is stored and rewritten with the app's state at every fact, so its size is broker work):
#:
#: * ``at``: the operation's finish (its receipt for a bare body), epoch seconds (an int when
#:   whole);
#: * ``n``: the fact's arrival number in this history, ordering facts with the same time (so
#:   that lists of facts compare, and sort, in the order of facts);
#: * ``flags``: :data:`FAILED` (its phase is not Succeeded), :data:`ROLLBACK`, :data:`REPORTED_DEGRADED`
#:   (the health reported with it was Degraded): all the rules read of the phase and the health;
#: * ``id``: the delivery id (applying the same deployment twice is a no-op), or its
#:   :func:`digest` once no event can name it any more (see :func:`_compact`);
#: * ``revisions``: the :func:`digest` of each revision it runs (only compared, never shown);
#: * ``lead``: the lead times (s) of the revisions it deployed first: ``{revision: seconds}``
#:   while its events may still be reported, then only the seconds, ``[seconds, ...]``.
Deployment = list[Any]
#: A kept health transition is ``[at, n, degraded]``: ``degraded`` is 1 for Degraded, 0 for Healthy.
Transition = list[Any]
AT, N, FLAGS, ID, REVISIONS, LEAD = range(6)
IS_DEGRADED = 2  # the index of a transition's health
FAILED, ROLLBACK, REPORTED_DEGRADED = 1, 2, 4


def digest(text: str) -> str:
    """A short stable digest of a delivery id or a revision: 48 bits of BLAKE2b, 8 characters.

    Two different texts of one app share a digest with a chance of about 2**-48 per pair.
    """
    raw = hashlib.blake2b(text.encode(), digest_size=6).digest()
    return binascii.b2a_base64(raw, newline=False).decode()  # base64: JSON needs no escapes


def lead_times(deployment: Deployment) -> Iterable[float]:
    """The lead times (s) a kept deployment holds, whatever its form."""
    lead = deployment[LEAD]
    return lead.values() if isinstance(lead, dict) else lead


def _compact(deployment: Deployment) -> Deployment:
    """``deployment`` once no event can name it: its id digested, its lead times without names."""
    lead = deployment[LEAD]
    if not isinstance(lead, dict):
        return deployment
    at, n, flags, id_, revisions, _ = deployment
    return [at, n, flags, digest(id_), revisions, list(lead.values())]


class Stats(TypedDict):
    """Count, sum, maximum and bucket counts (``len(BUCKETS) + 1``, the last +Inf) of samples."""

    count: int
    sum: float
    max: float | None
    buckets: list[int]


class Folded(TypedDict):
    """Totals of the deployments that left the window, oldest first."""

    deployments: int
    succeeded: int
    failed: int
    failed_deployments: int
    first_at: float | None
    last_at: float | None
    lead: Stats
    recovery: Stats
    open_since: float | None  # start of a failure not recovered when its deployment was folded


class Settled(TypedDict):
    """Where the episode walk stands before the newest deployment (a checkpoint).

    Every deployment but the newest has its successor, so the walk up to the newest one's
    events is final: the start of the episode open there, and how many episodes closed before
    it (folded ones included). Kept so that :func:`changes` only walks the newest deployment's
    events, not the whole history, on every fact.
    """

    open_since: float | None
    episodes: int


class History(TypedDict):
    """An app's DORA history: what its state stores under one key."""

    v: int
    deployments: list[Deployment]
    health: list[Transition]
    folded: list[Any] | None  # the Folded totals as a list (:func:`folded_of`), None: none yet
    window_s: NotRequired[float]  # the failure window the folded totals were decided with
    latest: NotRequired[float]  # the time of the latest fact applied, any health included
    n: NotRequired[int]  # facts stored so far: the next one's arrival number is n + 1
    settled: NotRequired[Settled]


def _empty_stats() -> Stats:
    return {"count": 0, "sum": 0.0, "max": None, "buckets": [0] * (len(BUCKETS) + 1)}


def new_history() -> History:
    """An empty history (an app with no deployment yet)."""
    return {
        "v": 2,
        "deployments": [],
        "health": [],
        "folded": None,
    }


def folded_of(history: Mapping[str, Any]) -> Folded:
    """The folded totals of ``history`` (stored as ``[deployments, succeeded, failed_deployments,
    first_at, last_at, open_since, lead, recovery]``, each stats ``[count, sum, max, buckets]``;
    ``None`` before the first fold). A new dict, free to change."""
    stored = history.get("folded")
    if not stored:
        return {
            "deployments": 0,
            "succeeded": 0,
            "failed": 0,
            "failed_deployments": 0,
            "first_at": None,
            "last_at": None,
            "lead": _empty_stats(),
            "recovery": _empty_stats(),
            "open_since": None,
        }
    n, succeeded, failed_deployments, first_at, last_at, open_since, lead, recovery = stored
    return {
        "deployments": n,
        "succeeded": succeeded,
        "failed": n - succeeded,
        "failed_deployments": failed_deployments,
        "first_at": first_at,
        "last_at": last_at,
        "lead": {"count": lead[0], "sum": lead[1], "max": lead[2], "buckets": list(lead[3])},
        "recovery": {
            "count": recovery[0],
            "sum": recovery[1],
            "max": recovery[2],
            "buckets": list(recovery[3]),
        },
        "open_since": open_since,
    }


def _copy(history: Mapping[str, Any] | None) -> History:
    """A copy of ``history`` to change without touching the original (``None``: a new one).

    Shallow where nothing is ever changed in place: deployment and transition entries are
    replaced, never modified, and :func:`_fold_oldest` copies the totals it updates.
    """
    if not history:
        return new_history()
    copied: History = {
        "v": history.get("v", 1),
        "deployments": list(history["deployments"]),
        "health": list(history["health"]),
        "folded": history["folded"],
    }
    if "window_s" in history:
        copied["window_s"] = history["window_s"]
    if "latest" in history:
        copied["latest"] = history["latest"]
    if "n" in history:
        copied["n"] = history["n"]
    if "settled" in history:
        copied["settled"] = history["settled"]
    return copied


def _key(fact: Deployment | Transition) -> list[Any]:
    """The order of facts: by time, then (at the same time) by arrival: ``[at, n]``.

    Every fact starts so, and no two share an arrival number, so facts compare (and bisect)
    in this order as they are, without a key function.
    """
    return fact[:2]


def _split(health: Sequence[Transition], fact: Deployment | Transition) -> int:
    """The index of the first transition after ``fact`` (transitions are kept in key order)."""
    return bisect.bisect_right(health, fact[:2])


def _after(facts: Sequence[Deployment | Transition], at: float) -> int:
    """The index of the first fact of ``facts`` later than ``at``."""
    return bisect.bisect_right(facts, [at, math.inf])


def _epoch(when: datetime) -> float:
    if when.tzinfo is None:
        raise ValueError(f"naive datetime {when!r}: give a time zone")
    return round(when.timestamp(), 3)


def _stamp(when: datetime) -> float:
    """A stored time: epoch seconds, an int when whole (Argo CD's times are: 2 bytes less)."""
    at = _epoch(when)
    return int(at) if at.is_integer() else at


def _iso(epoch: float) -> str:
    return timestamps.format_datetime(datetime.fromtimestamp(epoch, UTC))


def revisions_of(revision: str, revisions: Sequence[str]) -> list[str]:
    """The revisions a deployment runs: a multi-source app's ``revisions``, else ``[revision]``.

    Sorted and de-duplicated (two sources may pin the same commit); ``[]`` when neither is set.
    """
    if revisions:
        return sorted(set(revisions))
    return [revision] if revision else []


# --- applying facts ------------------------------------------------------------------------


def record_deployment(
    history: Mapping[str, Any] | None,
    *,
    delivery_id: str,
    finished_at: datetime,
    phase: str,
    revision: str,
    revisions: Sequence[str] = (),
    rollback: bool = False,
    health: str | None = None,
    commits: Mapping[str, datetime] | None = None,
    limit: int = DEFAULT_LIMIT,
    failure_window_s: float = DEFAULT_FAILURE_WINDOW_S,
) -> History:
    """``history`` with one announced deployment added (a new history; the argument is untouched).

    ``finished_at`` is the operation's finish time (a bare body's receipt time); ``commits`` maps
    a revision to its commit time where known. Each revision this deployment runs that no earlier
    *succeeded* deployment in the history ran gets a lead time, ``finished_at`` minus its commit
    time (0 when the commit is dated later), if the deployment succeeded, is not a rollback and
    the commit time is known. The same ``delivery_id`` again changes nothing. Beyond ``limit``
    deployments the oldest are folded into the totals, deciding their failure with
    ``failure_window_s`` (see docs/dora.md).
    """
    if limit < 2:
        raise ValueError("limit: at least 2 (a folded deployment needs its successor)")
    if history and history["deployments"]:
        ids = [d[ID] for d in history["deployments"]]
        if delivery_id in ids or digest(delivery_id) in ids:
            return _copy(history)
    new = _copy(history)
    at = _stamp(finished_at)
    runs = revisions_of(revision, revisions)
    digests = [digest(r) for r in runs]
    lead: dict[str, float] = {}
    if phase == SUCCEEDED and not rollback and commits:
        for r, rd in zip(runs, digests, strict=True):
            committed = commits.get(r)
            if committed is not None and not _deployed_before(new["deployments"], rd, at):
                lead[r] = max(0.0, round(at - _epoch(committed), 3))
    new["n"] = new.get("n", 0) + 1
    flags = (
        (FAILED if phase != SUCCEEDED else 0)
        | (ROLLBACK if rollback else 0)
        | (REPORTED_DEGRADED if health == DEGRADED else 0)
    )
    entry: Deployment = [at, new["n"], flags, delivery_id, digests, lead]
    deployments = new["deployments"]
    previous = deployments[-1] if deployments else None
    where = _after(deployments, at)
    if deployments and where == len(deployments) and "settled" in new:
        # the newest deployment gets its successor: its events become final
        newest = deployments[-1]
        v = verdict(newest, entry, new["health"], failure_window_s)
        transitions = new["health"]
        walked = transitions[_split(transitions, newest) : _split(transitions, entry)]
        closed, open_since = _episodes([newest], [v], walked, new["settled"]["open_since"])
        new["settled"] = {
            "open_since": open_since,
            "episodes": new["settled"]["episodes"] + len(closed),
        }
        deployments.append(entry)
    else:
        deployments.insert(where, entry)
        new["settled"] = _settle(new, failure_window_s)
    while len(new["deployments"]) > limit:
        _fold_oldest(new, failure_window_s)
    _compact_settled(new, entry, previous)
    _trim_health(new)
    new["latest"] = max(at, new.get("latest", at))
    return new


def _deployed_before(deployments: Sequence[Deployment], revision: str, at: float) -> bool:
    """A succeeded deployment kept, finished by ``at``, ran the revision (digest)."""
    ran = [d for d in deployments if revision in d[REVISIONS]]
    return any(not d[FLAGS] & FAILED and d[AT] <= at for d in ran)


def _compact_settled(history: History, entry: Deployment, previous: Deployment | None) -> None:
    """Compact every deployment :func:`changes` cannot name any more.

    Its events name the new deployment, the newest and the newest before this one (whose
    failure the new one may reveal, a rollback); every other kept deployment is settled.
    """
    deployments = history["deployments"]
    live = (entry[N], deployments[-1][N], previous[N] if previous is not None else 0)
    settled = [i for i, d in enumerate(deployments) if type(d[LEAD]) is dict and d[N] not in live]
    for i in settled:
        deployments[i] = _compact(deployments[i])


def record_health(
    history: Mapping[str, Any] | None,
    health: str,
    observed_at: datetime,
    *,
    health_limit: int = HEALTH_LIMIT,
    failure_window_s: float = DEFAULT_FAILURE_WINDOW_S,
) -> History:
    """``history`` with a health transition observed at ``observed_at`` (a new history).

    Only ``Degraded`` and ``Healthy`` matter to the keys and are kept (any other health only
    moves the time of the latest fact, which settles recoveries: :func:`changes`). Nothing is
    kept for a transition already held, older than every retained deployment, or redundant: the
    same health as the transition before it, both after the same deployment (nothing can happen
    between them that the second would change). At most ``health_limit`` are kept, the newest.
    """
    new = _copy(history)
    if not new["deployments"]:
        return new
    at = _stamp(observed_at)
    new["latest"] = max(at, new.get("latest", at))
    if health not in (DEGRADED, HEALTHY) or at < new["deployments"][0][AT]:
        return new
    degraded = int(health == DEGRADED)
    transitions = new["health"]
    if any(t[AT] == at and t[IS_DEGRADED] == degraded for t in transitions):
        return new
    where = _after(transitions, at)
    deployments = new["deployments"]
    since = deployments[_after(deployments, at) - 1][AT]  # it follows
    before = transitions[where - 1] if where else None
    if before is not None and before[IS_DEGRADED] == degraded and before[AT] > since:
        return new
    new["n"] = new.get("n", 0) + 1
    transitions.insert(where, [at, new["n"], degraded])
    _trim_health(new, health_limit)
    if at < new["deployments"][-1][AT]:  # late: it falls among settled events
        new["settled"] = _settle(new, failure_window_s)
    return new


def _trim_health(history: History, health_limit: int = HEALTH_LIMIT) -> None:
    if not history["deployments"]:
        history["health"] = []
        return
    health = history["health"]
    cut = max(_split(health, history["deployments"][0]), len(health) - health_limit)
    if cut > 0:  # most facts trim nothing: no copy then
        history["health"] = health[cut:]


# --- deciding failures and recoveries ------------------------------------------------------


class Verdict(NamedTuple):
    """What the rules say about one deployment, given what followed it (a tuple: made at
    every fact, several times)."""

    failed_operation: bool  # its phase is not Succeeded
    rolled_back: bool  # the next deployment is a rollback, within the window
    degraded_at: float | None  # first Degraded seen inside its window, before the next one
    failure_start: float | None  # when its failure began (None: not a change failure)
    recovers: bool  # succeeded, and the app was not Degraded after it (in its window)

    @property
    def change_failure(self) -> bool:
        """A change failure by any rule."""
        return self.failure_start is not None


def verdict(
    deployment: Deployment,
    following: Deployment | None,
    health: Sequence[Transition],
    failure_window_s: float,
) -> Verdict:
    """Apply the change-failure rules to ``deployment`` (docs/dora.md, "Change failure").

    ``following`` is the next deployment (None for the newest), ``health`` the transitions in
    order. A transition is inside the deployment's window when it came after the deployment and before the
    following one (by time, then arrival: :func:`_key`) and ``t < at + failure_window_s``.
    """
    at = deployment[AT]
    end = at + failure_window_s
    next_key = _key(following) if following is not None else [math.inf, 0]
    failed_operation = bool(deployment[FLAGS] & FAILED)
    rolled_back = (
        following is not None and bool(following[FLAGS] & ROLLBACK) and following[AT] < end
    )
    degraded_at: float | None = at if deployment[FLAGS] & REPORTED_DEGRADED else None
    if degraded_at is None:
        for i in range(_split(health, deployment), len(health)):
            t = health[i]
            if _key(t) >= next_key or t[AT] >= end:
                break
            if t[IS_DEGRADED]:
                degraded_at = t[AT]
                break
    # the failure begins at the failed operation's finish, else at the Degraded transition,
    # else (rolled back while never Degraded) at the finish of the change rolled back; a later
    # fact can add a failure but never move one's start
    failure_start: float | None = at if failed_operation else degraded_at
    if failure_start is None and rolled_back:
        failure_start = at
    return Verdict(
        failed_operation=failed_operation,
        rolled_back=rolled_back,
        degraded_at=degraded_at,
        failure_start=failure_start,
        recovers=not failed_operation and degraded_at is None,
    )


class Recovery(NamedTuple):
    """One failure episode that ended: when it began, how long it lasted, which fact ended it."""

    started: float
    seconds: float
    after: int  # the index of the deployment whose events (its own, its transitions) ended it


def _episodes(
    deployments: Sequence[Deployment],
    verdicts: Sequence[Verdict],
    health: Sequence[Transition],
    open_since: float | None,
) -> tuple[list[Recovery], float | None]:
    """Walk the timeline: failures open an episode, a recovery closes it.

    A failure while an episode is open joins it (its recovery is counted once, from the first
    failure). A recovering deployment or a return to Healthy closes the open episode. Events
    are walked deployment by deployment, each with the transitions observed from its finish to
    the next one's (so deployments finished at the same instant keep their order), and within
    that in time order, a recovery before a failure at the same time (a deployment may end one
    episode and, rolled back, begin the next). Transitions before the first deployment are not
    walked. Returns the closed episodes and the start of the one still open.
    """
    if open_since is None and all(v.failure_start is None for v in verdicts):
        return [], None  # no failure to open an episode: most facts of a healthy app
    events: list[tuple[int, float, int]] = []  # (deployment, time, 0 = recovery / 1 = failure)
    for i, (d, v) in enumerate(zip(deployments, verdicts, strict=True)):
        if v.recovers:
            events.append((i, d[AT], 0))
        if v.failure_start is not None:
            events.append((i, v.failure_start, 1))
    for t in health:
        group = bisect.bisect_right(deployments, _key(t)) - 1
        if not t[IS_DEGRADED] and group >= 0:
            events.append((group, t[AT], 0))
    closed: list[Recovery] = []
    for group, time, kind in sorted(events):
        if kind == 1 and open_since is None:
            open_since = time
        elif kind == 0 and open_since is not None:
            closed.append(Recovery(open_since, float(round(time - open_since, 3)), group))
            open_since = None
    return closed, open_since


def _verdicts(history: History, failure_window_s: float, start: int = 0) -> list[Verdict]:
    """The verdicts of the deployments from ``start`` on."""
    deployments, health = history["deployments"], history["health"]
    last = len(deployments) - 1
    return [
        verdict(deployments[i], deployments[i + 1] if i < last else None, health, failure_window_s)
        for i in range(start, len(deployments))
    ]


def _settle(history: History, failure_window_s: float) -> Settled:
    """The :class:`Settled` checkpoint of ``history``, walked from its folded totals."""
    deployments, folded = history["deployments"], folded_of(history)
    if len(deployments) < 2:
        return {"open_since": folded["open_since"], "episodes": folded["recovery"]["count"]}
    closed, open_since = _episodes(
        deployments[:-1],
        _verdicts(history, failure_window_s)[:-1],
        history["health"][: _split(history["health"], deployments[-1])],
        folded["open_since"],
    )
    return {"open_since": open_since, "episodes": folded["recovery"]["count"] + len(closed)}


def _add(stats: Stats, value: float) -> None:
    stats["count"] += 1
    stats["sum"] = round(stats["sum"] + value, 3)
    stats["max"] = value if stats["max"] is None else max(stats["max"], value)
    stats["buckets"][bisect.bisect_left(BUCKETS, value)] += 1


def _sum_into(total: Stats, part: Stats) -> None:
    total["count"] += part["count"]
    total["sum"] = round(total["sum"] + part["sum"], 3)
    if part["max"] is not None:
        total["max"] = part["max"] if total["max"] is None else max(total["max"], part["max"])
    total["buckets"] = [a + b for a, b in zip(total["buckets"], part["buckets"], strict=True)]


def _with(stored: list[Any], values: Iterable[float]) -> list[Any]:
    """Stored stats ``[count, sum, max, buckets]`` with ``values`` added (a new list)."""
    stats: Stats = {"count": stored[0], "sum": stored[1], "max": stored[2], "buckets": stored[3]}
    stats["buckets"] = list(stats["buckets"])
    for value in values:
        _add(stats, value)
    return [stats["count"], stats["sum"], stats["max"], stats["buckets"]]


_NO_STATS: list[Any] = [0, 0.0, None, [0] * (len(BUCKETS) + 1)]  # never changed in place


def _fold_oldest(history: History, failure_window_s: float) -> None:
    """Fold the oldest deployment into the totals; its successor is the new oldest.

    Works on the stored totals (:func:`folded_of` documents them) without decoding them: a
    deployment leaves the window at every fact of a busy app.
    """
    deployments, health = history["deployments"], history["health"]
    oldest, successor = deployments[0], deployments[1]
    v = verdict(oldest, successor, health, failure_window_s)
    stored = history["folded"] or [0, 0, 0, None, None, None, _NO_STATS, _NO_STATS]
    n, succeeded, failed_deployments, first, last, open_since, lead, recovery = stored
    cut = _split(health, successor)
    closed, open_since = _episodes([oldest], [v], health[:cut], open_since)
    leads = list(lead_times(oldest))
    at = oldest[AT]
    history["folded"] = [
        n + 1,
        succeeded + (not oldest[FLAGS] & FAILED),
        failed_deployments + v.change_failure,
        at if first is None else min(first, at),
        at if last is None else max(last, at),
        open_since,
        _with(lead, leads) if leads else lead,
        _with(recovery, [e.seconds for e in closed]) if closed else recovery,
    ]
    history["window_s"] = failure_window_s
    del deployments[0]
    if cut:
        history["health"] = health[cut:]


# --- the keys ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Summary:
    """A distribution of durations in seconds: ``None`` statistics when ``count`` is 0.

    ``estimated``: the median and p90 come from bucket counts (folded deployments included),
    interpolated linearly inside a bucket as Prometheus' ``histogram_quantile`` does; count,
    mean and max are exact either way.
    """

    count: int
    median: float | None
    p90: float | None
    mean: float | None
    max: float | None
    estimated: bool = False

    def as_json(self) -> dict[str, Any]:
        """The API's form: ``{"count", "median", "p90", "mean", "max", "estimated"}``."""
        return {
            "count": self.count,
            "median": self.median,
            "p90": self.p90,
            "mean": self.mean,
            "max": self.max,
            "estimated": self.estimated,
        }


def _exact(values: Sequence[float]) -> Summary:
    if not values:
        return Summary(0, None, None, None, None)
    ordered = sorted(values)
    p90 = (
        ordered[0]
        if len(ordered) == 1
        else statistics.quantiles(ordered, n=10, method="inclusive")[8]
    )
    return Summary(
        count=len(ordered),
        median=round(statistics.median(ordered), 3),
        p90=round(p90, 3),
        mean=round(statistics.fmean(ordered), 3),
        max=ordered[-1],
    )


def _bucket_quantile(q: float, buckets: Sequence[int], top: float) -> float:
    """``histogram_quantile``: the bucket holding rank ``q * count``, interpolated linearly.

    The +Inf bucket's upper bound is the exact maximum ``top``; the result never exceeds it.
    """
    rank = q * sum(buckets)
    seen = 0
    lower = 0.0
    bounds = [*BUCKETS, max(top, BUCKETS[-1])]
    for count, upper in zip(buckets, bounds, strict=True):
        if count and seen + count >= rank:
            return min(top, lower + (upper - lower) * (rank - seen) / count)
        seen += count
        lower = upper
    return top


def _merged(values: Sequence[float], stats: Stats) -> Summary:
    if not stats["count"]:
        return _exact(values)
    merged = _empty_stats()
    _sum_into(merged, stats)
    for value in values:
        _add(merged, value)
    top = merged["max"] or 0.0
    return Summary(
        count=merged["count"],
        median=round(_bucket_quantile(0.5, merged["buckets"], top), 3),
        p90=round(_bucket_quantile(0.9, merged["buckets"], top), 3),
        mean=round(merged["sum"] / merged["count"], 3),
        max=top,
        estimated=True,
    )


def _at_least(value: float, bounds: tuple[float, float, float]) -> str:
    """The first level whose bound ``value`` reaches (higher is better)."""
    for level, bound in zip((ELITE, HIGH, MEDIUM), bounds, strict=True):
        if value >= bound:
            return level
    return LOW


def _below(value: float, bounds: tuple[float, float, float], *, inclusive: bool) -> str:
    """The first level whose bound ``value`` stays under (lower is better; ``<=`` if inclusive)."""
    for level, bound in zip((ELITE, HIGH, MEDIUM), bounds, strict=True):
        if value < bound or (inclusive and value == bound):
            return level
    return LOW


#: Deployments per day at least this often: elite (daily or more), high (weekly), medium (monthly).
FREQUENCY_BOUNDS = (1.0, 1 / 7, 1 / 30)
#: Median lead time below: elite (a day), high (a week), medium (a month).
LEAD_TIME_BOUNDS = (DAY, WEEK, MONTH)
#: Median recovery time below: elite (an hour), high (a day), medium (a week).
RECOVERY_BOUNDS = (HOUR, DAY, WEEK)
#: Change failure rate at most: elite (5 %), high (10 %), medium (15 %).
FAILURE_RATE_BOUNDS = (0.05, 0.10, 0.15)


def levels(
    *,
    deployments_per_day: float | None,
    lead_time_median: float | None,
    change_failure_rate: float | None,
    recovery_time_median: float | None,
) -> dict[str, str | None]:
    """DORA's performance level of each key (docs/dora.md, "Performance levels").

    Bands of the 2023 Accelerate State of DevOps report, made contiguous: a value between two
    clusters belongs to the worse one. ``None`` for a key without data.
    """
    return {
        "deployment_frequency": None
        if deployments_per_day is None
        else _at_least(deployments_per_day, FREQUENCY_BOUNDS),
        "lead_time": None
        if lead_time_median is None
        else _below(lead_time_median, LEAD_TIME_BOUNDS, inclusive=False),
        "change_failure_rate": None
        if change_failure_rate is None
        else _below(change_failure_rate, FAILURE_RATE_BOUNDS, inclusive=True),
        "recovery_time": None
        if recovery_time_median is None
        else _below(recovery_time_median, RECOVERY_BOUNDS, inclusive=False),
    }


@dataclass(frozen=True, slots=True)
class Keys:
    """The four keys over one range, for one app or a project (see :meth:`as_json`)."""

    since: float | None
    until: float
    window_days: float
    deployments: int
    succeeded: int
    failed: int
    failed_deployments: int
    change_failure_rate: float | None
    recovery_time_seconds: Summary
    unrecovered_failures: int
    lead_time_seconds: Summary
    deployments_per_day: float | None
    levels: dict[str, str | None]
    complete: bool
    failure_window_seconds: float

    def as_json(self) -> dict[str, Any]:
        """The body of ``GET /dora`` (docs/dora.md, "The query API"), without app or project."""
        return {
            "since": _iso(self.since) if self.since is not None else None,
            "until": _iso(self.until),
            "window_days": self.window_days,
            "deployments": self.deployments,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "failed_deployments": self.failed_deployments,
            "change_failure_rate": self.change_failure_rate,
            "recovery_time_seconds": self.recovery_time_seconds.as_json(),
            "unrecovered_failures": self.unrecovered_failures,
            "lead_time_seconds": self.lead_time_seconds.as_json(),
            "deployments_per_day": self.deployments_per_day,
            "levels": dict(self.levels),
            "benchmark": BENCHMARK,
            "failure_window_seconds": self.failure_window_seconds,
            "complete": self.complete,
        }


def _covers(folded: Folded, since: float | None, until: float) -> bool | None:
    """True: the range holds every folded deployment; None: none of them; False: some."""
    first, last = folded["first_at"], folded["last_at"]
    if first is None or last is None:
        return None
    if (since is None or since <= first) and last < until:
        return True
    if (since is not None and last < since) or first >= until:
        return None
    return False


class Partial(TypedDict):
    """The mergeable part of the keys, for some apps: what a worker answers for its partitions.

    Plain JSON, so a worker can send it to the one answering a project query; :func:`combine`
    merges several into :class:`Keys`.
    """

    apps: int  # apps with at least one deployment in their history
    deployments: int
    succeeded: int
    failed_deployments: int
    unrecovered_failures: int
    recovery: list[float]  # the retained episodes' durations, seconds
    lead: list[float]
    folded_recovery: Stats  # folded totals, when the range covers them
    folded_lead: Stats
    first_at: float | None  # the earliest deployment of these apps, folded ones included
    complete: bool


def _range(
    since: datetime | None, until: datetime | None, now: datetime
) -> tuple[float | None, float]:
    start = _epoch(since) if since is not None else None
    end = _epoch(until) if until is not None else _epoch(now)
    if start is not None and start >= end:
        raise ValueError("since: must be before until")
    return start, end


def partial(
    histories: Iterable[Mapping[str, Any] | None],
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    now: datetime,
    failure_window_s: float = DEFAULT_FAILURE_WINDOW_S,
) -> Partial:
    """Counts and samples of ``histories`` over ``[since, until)``, to :func:`combine` later.

    Apps without a deployment add nothing; ``apps`` counts the others.
    """
    start, end = _range(since, until, now)

    def inside(t: float) -> bool:
        return (start is None or t >= start) and t < end

    part: Partial = {
        "apps": 0,
        "deployments": 0,
        "succeeded": 0,
        "failed_deployments": 0,
        "unrecovered_failures": 0,
        "recovery": [],
        "lead": [],
        "folded_recovery": _empty_stats(),
        "folded_lead": _empty_stats(),
        "first_at": None,
        "complete": True,
    }
    for history in (cast(History, h) for h in histories if h):
        deployments = history["deployments"]
        if not deployments:
            continue
        folded = folded_of(history)
        part["apps"] += 1
        covered = _covers(folded, start, end)
        if covered is False:
            part["complete"] = False
        elif covered:
            part["deployments"] += folded["deployments"]
            part["succeeded"] += folded["succeeded"]
            part["failed_deployments"] += folded["failed_deployments"]
            _sum_into(part["folded_recovery"], folded["recovery"])
            _sum_into(part["folded_lead"], folded["lead"])
        verdicts = _verdicts(history, failure_window_s)
        for d, v in zip(deployments, verdicts, strict=True):
            if inside(d[AT]):
                part["deployments"] += 1
                part["succeeded"] += not d[FLAGS] & FAILED
                part["failed_deployments"] += v.change_failure
                part["lead"] += lead_times(d)
        closed, open_since = _episodes(
            deployments, verdicts, history["health"], folded["open_since"]
        )
        part["recovery"] += [e.seconds for e in closed if inside(e.started)]
        part["unrecovered_failures"] += open_since is not None and inside(open_since)
        earliest = folded["first_at"] if folded["first_at"] is not None else deployments[0][AT]
        first = part["first_at"]
        part["first_at"] = earliest if first is None else min(first, earliest)
    return part


def combine(
    parts: Iterable[Mapping[str, Any]],
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    now: datetime,
    failure_window_s: float = DEFAULT_FAILURE_WINDOW_S,
) -> Keys:
    """Merge :func:`partial` answers (same range and window) into the keys.

    Raises :class:`NoDeployments` when no app of any part has a deployment.
    """
    start, end = _range(since, until, now)
    apps = n = succeeded = failed_deployments = unrecovered = 0
    recoveries: list[float] = []
    leads: list[float] = []
    folded_recovery, folded_lead = _empty_stats(), _empty_stats()
    complete = True
    first_at: float | None = None
    for part in parts:
        apps += part["apps"]
        n += part["deployments"]
        succeeded += part["succeeded"]
        failed_deployments += part["failed_deployments"]
        unrecovered += part["unrecovered_failures"]
        recoveries += part["recovery"]
        leads += part["lead"]
        _sum_into(folded_recovery, part["folded_recovery"])
        _sum_into(folded_lead, part["folded_lead"])
        complete = complete and part["complete"]
        if part["first_at"] is not None:
            first_at = part["first_at"] if first_at is None else min(first_at, part["first_at"])
    if not apps:
        raise NoDeployments("no deployment recorded")
    window_start = start if start is not None else (first_at if first_at is not None else end)
    window_days = round(max(end - window_start, DAY) / DAY, 6)
    per_day = round(n / window_days, 6)
    rate = round(failed_deployments / n, 6) if n else None
    recovery = _merged(recoveries, folded_recovery)
    lead = _merged(leads, folded_lead)
    return Keys(
        since=start,
        until=end,
        window_days=window_days,
        deployments=n,
        succeeded=succeeded,
        failed=n - succeeded,
        failed_deployments=failed_deployments,
        change_failure_rate=rate,
        recovery_time_seconds=recovery,
        unrecovered_failures=unrecovered,
        lead_time_seconds=lead,
        deployments_per_day=per_day,
        levels=levels(
            deployments_per_day=per_day,
            lead_time_median=lead.median,
            change_failure_rate=rate,
            recovery_time_median=recovery.median,
        ),
        complete=complete,
        failure_window_seconds=failure_window_s,
    )


def keys(
    histories: Iterable[Mapping[str, Any] | None],
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    now: datetime,
    failure_window_s: float = DEFAULT_FAILURE_WINDOW_S,
) -> Keys:
    """The four keys over deployments finished in ``[since, until)`` of one app or several.

    ``histories`` holds one app's history for ``/dora?app=``, every app of the project for
    ``/dora?project=``. ``until`` defaults to ``now``; ``since`` to all time. Raises
    :class:`NoDeployments` when no history holds any deployment; a range without deployments
    gives zero counts and ``None`` rates. The same as :func:`combine` over one :func:`partial`.
    """
    part = partial(histories, since, until, now=now, failure_window_s=failure_window_s)
    return combine([part], since, until, now=now, failure_window_s=failure_window_s)


# --- what a fact changed, for the exporter ------------------------------------------------

CHANGE_FAILURE = "change_failure"
RECOVERY = "recovery"
LEAD_TIME = "lead_time"


def _reason(v: Verdict) -> str:
    if v.failed_operation:
        return "operation"
    return "degraded" if v.degraded_at is not None else "rollback"


def _newest_is_final(history: History, newest: Verdict, failure_window_s: float) -> bool:
    """No later fact can take back the newest deployment's recovery.

    Later facts (in time order) can only add failures; the one thing they can take back is the
    recovery by the newest deployment, while a Degraded transition may still come inside its
    window: until a fact at least ``failure_window_s`` after it is known.
    """
    at = history["deployments"][-1][AT]
    return not newest.recovers or history.get("latest", at) >= at + failure_window_s


def changes(
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any],
    *,
    failure_window_s: float = DEFAULT_FAILURE_WINDOW_S,
) -> list[dict[str, Any]]:
    """What applying one fact turned ``before`` into ``after``: the exporter's DORA events.

    ``{"kind": "change_failure", "deployment", "at", "reason"}`` for each deployment that became
    a change failure (``reason``: the first rule that applies of ``operation``, ``degraded``,
    ``rollback``); ``{"kind": "lead_time", "deployment", "revision", "at", "seconds"}`` for each
    lead time of a new deployment; ``{"kind": "recovery", "episode", "started_at", "at",
    "seconds"}`` for each failure episode whose recovery became final (``episode``: its ordinal
    in the app's history). ``at`` is RFC 3339; an event is identified by its kind with
    ``deployment`` (and ``revision``), or ``episode`` and ``started_at`` for a recovery, so a
    replay's copy can be dropped. A change failure or lead time is final when it appears; a
    recovery is reported once final (:func:`_newest_is_final`). For facts in time order the
    events of every fact add up to :func:`keys` over all time; a late fact (older than the
    newest deployment) changes the keys but may go unreported. Only the newest deployments'
    events are walked (from the :class:`Settled` checkpoint), not the whole history.
    """
    old = cast(History, before) if before else new_history()
    new = cast(History, after)
    deployments = new["deployments"]
    if not deployments:
        return []
    found: list[dict[str, Any]] = []
    was, settled, reported, first = _walk_start(old, new, failure_window_s)
    seen = old.get("n", 0)  # facts stored before: a deployment numbered above is new
    verdicts = _verdicts(new, failure_window_s, first)
    last = len(deployments) - 1
    # in time order only the previous newest can change its verdict, and only later ones are
    # new; a late deployment, inserted before the previous newest, is looked at too
    in_order = not first or deployments[-1][N] > seen or new.get("n", 0) == seen
    late = [] if in_order else [i for i in range(first) if deployments[i][N] > seen]
    for i in [*late, *range(first, last + 1)]:
        d = deployments[i]
        if i >= first:
            v = verdicts[i - first]
        else:
            v = verdict(d, deployments[i + 1], new["health"], failure_window_s)
        is_new = d[N] > seen
        before_v = None if is_new else was
        if v.failure_start is not None and (before_v is None or before_v.failure_start is None):
            found.append(
                {
                    "kind": CHANGE_FAILURE,
                    "deployment": d[ID],
                    "at": _iso(v.failure_start),
                    "reason": _reason(v),
                }
            )
        if is_new:
            found += [
                {
                    "kind": LEAD_TIME,
                    "deployment": d[ID],
                    "revision": revision,
                    "at": _iso(d[AT]),
                    "seconds": seconds,
                }
                for revision, seconds in sorted(cast(dict[str, float], d[LEAD]).items())
            ]
    return found + _final_recoveries(new, verdicts, settled, reported, first, failure_window_s)


def _walk_start(
    old: History, new: History, failure_window_s: float
) -> tuple[Verdict | None, Settled, int, int]:
    """Where :func:`changes` starts its walk: the previous newest deployment's verdict, the
    settled checkpoint, how many recoveries were reported, and that deployment's index in
    ``new`` (0 and nothing reported for an app's first fact)."""
    deployments = new["deployments"]
    if not old["deployments"]:
        return None, Settled(open_since=folded_of(new)["open_since"], episodes=0), 0, 0
    old_newest = old["deployments"][-1]
    settled = old.get("settled") or _settle(old, failure_window_s)
    was = verdict(old_newest, None, old["health"], failure_window_s)
    reported = settled["episodes"]
    if _newest_is_final(old, was, failure_window_s):
        walked = old["health"][_split(old["health"], old_newest) :]
        closed, _ = _episodes([old_newest], [was], walked, settled["open_since"])
        reported += len(closed)
    ids = (i for i in range(len(deployments) - 1, -1, -1))
    first = next((i for i in ids if deployments[i][N] == old_newest[N]), -1)
    if first < 0:
        raise ValueError("after: does not hold before's newest deployment")
    return was, settled, reported, first


def _final_recoveries(
    new: History,
    verdicts: list[Any],
    settled: Mapping[str, Any],
    reported: int,
    first: int,
    failure_window_s: float,
) -> list[dict[str, Any]]:
    """The recovery events :func:`changes` reports: episodes closed from ``first`` on whose
    recovery became final and was not reported before."""
    deployments = new["deployments"]
    last = len(deployments) - 1
    tail = deployments[first:]
    walked = new["health"][_split(new["health"], tail[0]) :]
    closed, _ = _episodes(tail, verdicts, walked, settled["open_since"])
    final_newest = _newest_is_final(new, verdicts[-1], failure_window_s)
    return [
        {
            "kind": RECOVERY,
            "episode": settled["episodes"] + j,
            "started_at": _iso(e.started),
            "at": _iso(e.started + e.seconds),
            "seconds": e.seconds,
        }
        for j, e in enumerate(closed)
        if settled["episodes"] + j >= reported and (final_newest or first + e.after < last)
    ]


# --- from the worker's records -------------------------------------------------------------


def _parse(value: Any) -> datetime | None:
    return timestamps.parse(value)


def commits_of(commit: Any) -> dict[str, datetime]:
    """Commit times by revision from the envelope's optional ``commit`` (or a list of them).

    Each is ``{"revision", "date", ...}``; one without a revision or a parseable RFC 3339
    ``date`` is left out. ``{}`` for none.
    """
    items = commit if isinstance(commit, list) else [commit]
    found: dict[str, datetime] = {}
    for item in items:
        if not isinstance(item, Mapping):
            continue
        revision, date = item.get("revision"), _parse(item.get("date"))
        if isinstance(revision, str) and revision and date is not None:
            found[revision] = date
    return found


def deployment_args(record: Mapping[str, Any]) -> dict[str, Any]:
    """The :func:`record_deployment` arguments of a ``synctrail.deployment/v1`` record.

    The finish time is ``operation.finished_at``, else the record's ``received_at`` (bare
    bodies carry no operation times). Commits are not in the record: pass ``commits=``
    from the sync-event.
    """
    operation = record.get("operation") or {}
    finished = _parse(operation.get("finished_at")) or _parse(record.get("received_at"))
    if finished is None:
        raise ValueError("deployment record without finished_at or received_at")
    return {
        "delivery_id": record["delivery_id"],
        "finished_at": finished,
        "phase": operation.get("phase") or SUCCEEDED,
        "revision": record.get("revision") or "",
        "revisions": list(record.get("revisions") or []),
        "rollback": bool(record.get("rollback")),
        "health": record.get("health"),
    }
