"""What one sync event means for one app (pure): duplicate, stale, resync or a deployment.

``decide`` takes a ``synctrail.sync-event/v1`` record, the app's stored state (or ``None`` for
an app never seen) and the policy rules in force, and returns everything the agent must emit
and store. ``recheck_policy`` does the same for a policy change against an app already running.
No I/O here: the agent reads state, calls these, and writes what they return.

A record whose ``delivery_id`` the app's state already holds is a duplicate, whatever came in
between: the state keeps the ids of the last :data:`RECENT_DELIVERY_IDS` deliveries decided for
the app, whatever their outcome. The bridge appends a delivery twice when a broker stalls (the
produce times out, the record is spooled, the broker appends the original late and the spool's
drain appends it again) or when it is killed mid-drain (one drain batch is sent again); the
copy then arrives behind the app's later deliveries, and compared with the app's last operation
alone a bare body would read as a rollback. Between a record and its copy lie only the app's
deliveries accepted during that one outage, so the memory holds while one app receives fewer
than :data:`RECENT_DELIVERY_IDS` deliveries in one outage (Argo CD sends one per sync).

A delivery for the operation already decided (a duplicate by content, not a delivery id already
seen) whose ``health`` differs from the recorded one is a **health transition**
(:func:`_transition_of`): never announced; the state records the health and its time, and a
``synctrail.dora/v1`` ``health_transition`` record goes on the metrics topic. Every announced
deployment and every health transition is also applied to the app's DORA history (state key
``dora``, :mod:`streams.domain.dora`), and what it changed (change failures, lead times,
recoveries) becomes ``synctrail.dora/v1`` records too (:func:`_dora_findings`).

``decide`` runs in steps, each a small function over plain data: the stored state is read once
into a :class:`_Prior` view (empty values for an app never seen); :func:`_dedupe` finds a
duplicate or stale event (:func:`_skipped` counts it) and :func:`_transition_of` a health
transition among the duplicates (:func:`_health_changed`); :func:`_apply` applies the operation to
the prior state (:class:`_Applied`); :func:`_classify` tells a resync from a rollback and a
deployment; :func:`_resynced` or :func:`_deployed` build the new state and the records, a
deployment's CDEvent among them (:func:`_cdevent`, :mod:`streams.domain.cdevents`; the state
keeps the app's ``environments`` for it).
``recheck_policy`` shares the flagging (:func:`_flag`), violation and remediation builders.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from streams.domain import cdevents, dora, records, timestamps
from streams.domain.cloudevents import default_source
from streams.domain.diff import canonical_sha256, diff_images, fingerprint
from streams.domain.policy import find_violations
from streams.domain.records import JsonObject
from streams.domain.state import AppliedOperation, apply_operation, outcome_of_bare, running_images

DEPLOYED = "deployed"
DUPLICATE = "duplicate"
RESYNC = "resync"
STALE = "stale"
HEALTH_TRANSITION = "health_transition"
_ROLLBACK = "rollback"
_DEPLOYMENT = "deployment"

#: How many recent delivery ids each app's state remembers (see the module docstring). Each
#: is 32 hex digits: 32 of them add about 1.2 KB to an app's state.
RECENT_DELIVERY_IDS = 32


class InvalidSyncEvent(ValueError):
    """A record on sync-events that is not a usable ``synctrail.sync-event/v1``."""


@dataclass(frozen=True, slots=True)
class Context:
    """Per-worker settings the decisions depend on."""

    history_limit: int = 10
    #: ``SYNCTRAIL_DORA_FAILURE_WINDOW``: seconds after a deployment in which a Degraded
    #: transition or a rollback makes it a change failure (docs/dora.md)
    dora_failure_window_s: float = dora.DEFAULT_FAILURE_WINDOW_S
    #: ``SYNCTRAIL_DORA_HISTORY``: deployments each app's DORA history keeps (at least 2)
    dora_history: int = dora.DEFAULT_LIMIT
    #: the CDEvents' ``context.source`` (``SYNCTRAIL_EVENT_SOURCE``)
    event_source: str = default_source("synctrail.")
    #: ``SYNCTRAIL_CDEVENTS``: write each successful deployment's CDEvent
    cdevents: bool = True


@dataclass(slots=True)
class Decision:
    """The outcome of one event for one app, and everything to emit and store."""

    outcome: str
    app_key: str
    state: JsonObject | None = None  # new state to store; None leaves the stored one alone
    deployment: JsonObject | None = None
    violations: list[JsonObject] = field(default_factory=list)
    remediation: JsonObject | None = None
    metrics: list[JsonObject] = field(default_factory=list)
    cdevent: JsonObject | None = None  # for <prefix>cdevents (streams.domain.cdevents)


def app_key_of(event: Mapping[str, Any]) -> str:
    """The qualified app name ``<namespace>/<name>`` of a sync event."""
    app = event.get("app")
    if not isinstance(app, Mapping):
        raise InvalidSyncEvent("app: expected an object")
    name, namespace = app.get("name"), app.get("namespace")
    if not isinstance(name, str) or not name or not isinstance(namespace, str) or not namespace:
        raise InvalidSyncEvent("app.name and app.namespace: expected non-empty strings")
    return f"{namespace}/{name}"


def validate_event(event: Any) -> JsonObject:
    """Check a decoded record against :class:`records.SyncEvent`; raise ``InvalidSyncEvent``
    naming the first bad field (msgspec's message, e.g. ``... - at `$.revisions[0]```).

    The type checks every field but ``sync_result``, which is Argo CD's object as received;
    the decision reads its ``resources``, so those are checked here. The event stays the dict
    it is: the decision works on plain data, and converting costs about 1 µs.
    """
    if not isinstance(event, dict):
        raise InvalidSyncEvent(f"expected a JSON object, got {type(event).__name__}")
    try:
        msgspec.convert(event, records.SyncEvent)
    except msgspec.ValidationError as exc:
        raise InvalidSyncEvent(str(exc)) from None
    resources = (event["sync_result"] or {}).get("resources", [])
    if not isinstance(resources, list) or not all(isinstance(r, dict) for r in resources):
        raise InvalidSyncEvent("sync_result.resources: expected a list of objects")
    return event


def _operation_of(event: Mapping[str, Any], phase: str) -> JsonObject:
    op = event.get("operation") or {}
    return {
        "phase": phase,
        "message": op.get("message"),
        "started_at": op.get("started_at"),
        "finished_at": op.get("finished_at"),
        "initiated_by": op.get("initiated_by"),
        "retry_count": op.get("retry_count") or 0,
    }


def _is_duplicate_or_stale(
    event: Mapping[str, Any], last: Mapping[str, Any], sr_sha: str
) -> str | None:
    if event["body_sha256"] == last.get("body_sha256"):
        return DUPLICATE
    if event["shape"] == "bare":
        return DUPLICATE if sr_sha == last.get("sync_result_sha") else None
    started = (event.get("operation") or {}).get("started_at")
    if started and started == last.get("started_at") and sr_sha == last.get("sync_result_sha"):
        return DUPLICATE
    new_time, last_time = timestamps.parse(started), timestamps.parse(last.get("started_at"))
    if new_time and last_time and new_time < last_time:
        return STALE
    return None


def _remember(seen: list[str], delivery_id: str) -> list[str]:
    """``seen`` with ``delivery_id`` last, at most :data:`RECENT_DELIVERY_IDS` long."""
    return [*seen, delivery_id][-RECENT_DELIVERY_IDS:]


def _revision_key(revision: str, revisions: Sequence[str]) -> list[Any]:
    return [revision, list(revisions)]


def _known_good(history: Sequence[Mapping[str, Any]], bad_images: set[str]) -> JsonObject | None:
    """The newest successful deploy that ran none of ``bad_images`` and was never denied."""
    for entry in reversed(history):
        if (
            entry.get("phase") == "Succeeded"
            and not entry.get("denied")
            and not bad_images.intersection(entry.get("images", []))
        ):
            return dict(entry)
    return None


def metric_event(
    kind: str, app_key: str, project: str | None, now: datetime, **fields: Any
) -> JsonObject:
    """A ``synctrail.metric/v1`` record; ``fields`` fill the kind-specific values."""
    return {
        "schema": records.METRIC_V1,
        "kind": kind,
        "app": app_key,
        "project": project,
        "timestamp": now.timestamp(),
        "delivery_id": fields.pop("delivery_id", None),
        "latency_seconds": None,
        "running_images": None,
        "image_changes": None,
        "phase": None,
        "initial": None,
        "rule": None,
        "image": None,
        **fields,
    }


def _violation_record(
    state: Mapping[str, Any],
    violation: Mapping[str, Any],
    *,
    detected: str,
    delivery_id: str | None,
    now: datetime,
) -> JsonObject:
    return {
        "schema": records.VIOLATION_V1,
        "app": state["app"],
        "app_namespace": state["app_namespace"],
        "project": state.get("project"),
        "image": violation["image"],
        "rule": violation["rule"],
        "rule_id": violation["rule_id"],
        "reason": violation["reason"],
        "detected": detected,
        "revision": state.get("revision"),
        "revisions": list(state.get("revisions") or []),
        "delivery_id": delivery_id,
        "detected_at": timestamps.format_datetime(now),
    }


def _flag(
    flagged: Mapping[str, list[str]], violations: Iterable[Mapping[str, Any]]
) -> tuple[list[Mapping[str, Any]], dict[str, list[str]]]:
    """Violations not yet reported for this app, and ``flagged`` with them marked reported.

    ``flagged`` maps each running image to the ids of the rules it was reported for.
    """
    fresh = [v for v in violations if v["rule_id"] not in flagged.get(v["image"], ())]
    marked = dict(flagged)
    for v in fresh:
        marked[v["image"]] = sorted({*marked.get(v["image"], ()), v["rule_id"]})
    return fresh, marked


def _still_running(flagged: Mapping[str, list[str]], images: Iterable[str]) -> dict[str, list[str]]:
    """Forget reports for images no longer running, so a redeploy of one is reported again."""
    running = set(images)
    return {image: list(rules) for image, rules in flagged.items() if image in running}


def _remediation(
    state: Mapping[str, Any],
    denied: Sequence[Mapping[str, Any]],
    history: Sequence[Mapping[str, Any]],
    *,
    delivery_id: str | None,
    now: datetime,
) -> JsonObject:
    bad_images = {v["image"] for v in denied}
    good = _known_good(history, bad_images)
    return {
        "schema": records.REMEDIATION_V1,
        "app": state["app"],
        "app_namespace": state["app_namespace"],
        "project": state.get("project"),
        "action": "rollback",
        "bad_images": sorted(bad_images),
        "reasons": sorted({v["reason"] for v in denied}),
        "current_revision": state.get("revision"),
        "current_revisions": list(state.get("revisions") or []),
        "known_good_revision": good["revision"] if good else None,
        "known_good_revisions": list(good["revisions"]) if good else [],
        "requested_at": timestamps.format_datetime(now),
        "delivery_id": delivery_id,
    }


# --- the steps of decide() ---------------------------------------------------------------------


@dataclass(slots=True)
class _Prior:
    """The app's stored state as the steps read it: empty values for an app never seen."""

    state: Mapping[str, Any] | None
    project: str | None
    destination: Mapping[str, Any] | None
    seen: list[str]
    last: Mapping[str, Any] | None
    resources: Mapping[str, list[str]]
    images: Sequence[str]
    history: Sequence[Mapping[str, Any]]
    last_success: Mapping[str, Any] | None
    flagged: Mapping[str, list[str]]
    health: str | None
    dora: Mapping[str, Any] | None  # None: a state written before the DORA history

    @property
    def initial(self) -> bool:
        return self.state is None


def _prior_of(state: Mapping[str, Any] | None) -> _Prior:
    view: Mapping[str, Any] = state or {}
    return _Prior(
        state=state,
        project=view.get("project"),
        destination=view.get("destination"),
        seen=list(view.get("recent_delivery_ids", ())),
        last=view.get("last_operation"),
        resources=view.get("resources", {}),
        images=view.get("images", []),
        history=view.get("history", []),
        last_success=view.get("last_success"),
        flagged=view.get("flagged", {}),
        health=view.get("health"),
        dora=view.get("dora"),
    )


def _dedupe(event: Mapping[str, Any], prior: _Prior, sr_sha: str) -> str | None:
    """:data:`DUPLICATE` or :data:`STALE` for an event already decided, else ``None``."""
    if event["delivery_id"] in prior.seen:
        return DUPLICATE
    if prior.last:
        return _is_duplicate_or_stale(event, prior.last, sr_sha)
    return None


def _skipped(
    verdict: str,
    prior: _Prior,
    *,
    app_key: str,
    project: str | None,
    delivery_id: str,
    now: datetime,
) -> Decision:
    """A duplicate or stale event: counted, and its delivery id remembered if it is new."""
    metrics = [metric_event(verdict, app_key, project, now, delivery_id=delivery_id)]
    if delivery_id in prior.seen or prior.state is None:
        return Decision(verdict, app_key, metrics=metrics)
    # remembered, so that a second copy arriving after a later delivery is one too
    return Decision(
        verdict,
        app_key,
        state={**prior.state, "recent_delivery_ids": _remember(prior.seen, delivery_id)},
        metrics=metrics,
    )


# --- health transitions and the DORA history ---------------------------------------------------


def dora_record(
    kind: str,
    app_key: str,
    project: str | None,
    now: datetime,
    *,
    delivery_id: str | None,
    at: str,
    **fields: Any,
) -> JsonObject:
    """A ``synctrail.dora/v1`` record; ``fields`` fill the kind-specific values."""
    return {
        "schema": records.DORA_V1,
        "kind": kind,
        "app": app_key,
        "project": project,
        "timestamp": now.timestamp(),
        "delivery_id": delivery_id,
        "at": at,
        "health": None,
        "previous_health": None,
        "deployment": None,
        "revision": None,
        "reason": None,
        "seconds": None,
        "episode": None,
        "started_at": None,
        **fields,
    }


def _dora_findings(
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any],
    ctx: Context,
    *,
    app_key: str,
    project: str | None,
    delivery_id: str,
    now: datetime,
) -> list[JsonObject]:
    """One ``synctrail.dora/v1`` record per finding of :func:`dora.changes`."""
    found = []
    for change in dora.changes(before, after, failure_window_s=ctx.dora_failure_window_s):
        kind, at = change.pop("kind"), change.pop("at")
        found.append(
            dora_record(kind, app_key, project, now, delivery_id=delivery_id, at=at, **change)
        )
    return found


def observed_time(event: Mapping[str, Any]) -> datetime | None:
    """When the event's health was observed: ``observed_at``, else the bridge's ``received_at``."""
    return timestamps.parse(event.get("observed_at")) or timestamps.parse(event["received_at"])


def _transition_of(event: Mapping[str, Any], prior: _Prior) -> str | None:
    """For a duplicate by content: :data:`HEALTH_TRANSITION` when it reports another health,
    :data:`STALE` when that health was observed before the recorded transition's (a late retry
    of an earlier transition), ``None`` when it is a plain duplicate."""
    health = event.get("health")
    if (
        not health
        or health == prior.health
        or prior.state is None
        or event["delivery_id"] in prior.seen  # the bridge's own repeat: decided already
    ):
        return None
    recorded = timestamps.parse(prior.state.get("health_changed_at"))
    observed = observed_time(event)
    if recorded is not None and observed is not None and observed < recorded:
        return STALE
    return HEALTH_TRANSITION


def _health_changed(
    event: Mapping[str, Any],
    prior: _Prior,
    *,
    app_key: str,
    project: str | None,
    now: datetime,
    ctx: Context,
) -> Decision:
    """A health transition: the state records it, a ``health_transition`` record and what it
    changed in the app's DORA history go on the metrics topic; nothing is announced."""
    assert prior.state is not None  # a duplicate has a state
    health, delivery_id = event["health"], event["delivery_id"]
    observed = observed_time(event) or now
    at = timestamps.format_datetime(observed)
    deployed = prior.history[-1] if prior.history else None
    finished = timestamps.parse((deployed or {}).get("finished_at"))
    transition = dora_record(
        HEALTH_TRANSITION,
        app_key,
        project,
        now,
        delivery_id=delivery_id,
        at=at,
        health=health,
        previous_health=prior.health,
        deployment=(deployed or {}).get("delivery_id"),
        revision=prior.state.get("revision") or None,
        seconds=max(0.0, (observed - finished).total_seconds()) if finished else None,
    )
    history = dora.record_health(
        prior.dora, health, observed, failure_window_s=ctx.dora_failure_window_s
    )
    findings = _dora_findings(
        prior.dora,
        history,
        ctx,
        app_key=app_key,
        project=project,
        delivery_id=delivery_id,
        now=now,
    )
    state = {
        **prior.state,
        "health": health,
        "health_changed_at": at,
        "dora": history,
        "recent_delivery_ids": _remember(prior.seen, delivery_id),
        "updated_at": timestamps.format_datetime(now),
    }
    return Decision(HEALTH_TRANSITION, app_key, state=state, metrics=[transition, *findings])


@dataclass(slots=True)
class _Applied:
    """A new operation applied to the app's prior state: what a resync and a deploy share."""

    app_key: str
    project: str | None
    delivery_id: str
    sr_sha: str
    phase: str
    operation: JsonObject
    result: AppliedOperation
    images_before: Sequence[str]
    images_after: list[str]
    revision: str
    revisions: list[str]
    fingerprint: str
    destination: Mapping[str, Any] | None
    latency: float | None


def _apply(
    event: Mapping[str, Any],
    prior: _Prior,
    *,
    app_key: str,
    project: str | None,
    sr_sha: str,
    now: datetime,
) -> _Applied:
    sync_result = event.get("sync_result")
    result = apply_operation(prior.resources, sync_result)
    images_after = running_images(result.resources)
    phase = (
        (event.get("operation") or {}).get("phase") or "Succeeded"
        if event["shape"] == "envelope"
        else outcome_of_bare(sync_result)
    )
    revision, revisions = event.get("revision", ""), list(event.get("revisions", []))
    received = timestamps.parse(event["received_at"])
    return _Applied(
        app_key=app_key,
        project=project,
        delivery_id=event["delivery_id"],
        sr_sha=sr_sha,
        phase=phase,
        operation=_operation_of(event, phase),
        result=result,
        images_before=prior.images,
        images_after=images_after,
        revision=revision,
        revisions=revisions,
        fingerprint=fingerprint(revision, revisions, images_after),
        destination=event.get("destination") or prior.destination,
        latency=max(0.0, (now - received).total_seconds()) if received else None,
    )


def _classify(prior: _Prior, step: _Applied, history: Sequence[Mapping[str, Any]]) -> str:
    """:data:`RESYNC` (same revision and images again), ``rollback`` or ``deployment``."""
    last_success = prior.last_success
    this_revision = _revision_key(step.revision, step.revisions)
    if (
        step.phase == "Succeeded"
        and not prior.initial
        and (prior.last or {}).get("phase") == "Succeeded"
        and last_success is not None
        and _revision_key(last_success["revision"], last_success["revisions"]) == this_revision
        and list(last_success["images"]) == step.images_after
    ):
        return RESYNC
    earlier_revisions = [
        _revision_key(h["revision"], h["revisions"])
        for h in history
        if h.get("phase") == "Succeeded"
    ]
    if (
        earlier_revisions
        and this_revision in earlier_revisions[:-1]
        and this_revision != earlier_revisions[-1]
    ):
        return _ROLLBACK
    return _DEPLOYMENT


def _new_state(
    event: Mapping[str, Any],
    prior: _Prior,
    step: _Applied,
    *,
    history: list[JsonObject],
    flagged: dict[str, list[str]],
    environments: list[str],
    now: datetime,
) -> JsonObject:
    """The app's state to store after ``step``."""
    app, operation = event["app"], step.operation
    return {
        "app": app["name"],
        "app_namespace": app["namespace"],
        "project": step.project,
        "destination": step.destination,
        "health": event.get("health"),
        "resources": step.result.resources,
        "images": step.images_after,
        "revision": step.revision,
        "revisions": step.revisions,
        "fingerprint": step.fingerprint,
        "last_operation": {
            "started_at": operation["started_at"],
            "finished_at": operation["finished_at"],
            "phase": step.phase,
            "sync_result_sha": step.sr_sha,
            "body_sha256": event["body_sha256"],
            "delivery_id": step.delivery_id,
            "received_at": event["received_at"],
        },
        "last_success": {
            "revision": step.revision,
            "revisions": step.revisions,
            "images": step.images_after,
            "fingerprint": step.fingerprint,
        }
        if step.phase == "Succeeded"
        else prior.last_success,
        "history": history,
        "flagged": flagged,
        "environments": environments,
        "recent_delivery_ids": _remember(prior.seen, step.delivery_id),
        "updated_at": timestamps.format_datetime(now),
    }


def _resynced(
    event: Mapping[str, Any],
    prior: _Prior,
    step: _Applied,
    history: list[JsonObject],
    *,
    now: datetime,
) -> Decision:
    """A resync: nothing to announce; the state and a metric are updated."""
    flagged = _still_running(prior.flagged, step.images_after)
    metric = metric_event(
        RESYNC,
        step.app_key,
        step.project,
        now,
        delivery_id=step.delivery_id,
        latency_seconds=step.latency,
        running_images=len(step.images_after),
    )
    state = _new_state(
        event,
        prior,
        step,
        history=history,
        flagged=flagged,
        environments=cdevents.known_environments(prior.state),
        now=now,
    )
    if prior.dora is not None:  # a resync is no DORA fact: the history stays as it is
        state["dora"] = prior.dora
    return Decision(RESYNC, step.app_key, state=state, metrics=[metric])


def _deployment_record(
    event: Mapping[str, Any],
    prior: _Prior,
    step: _Applied,
    violations: Sequence[Mapping[str, Any]],
    *,
    rollback: bool,
) -> JsonObject:
    """The ``synctrail.deployment/v1`` record of ``step``."""
    app, result, last_success = event["app"], step.result, prior.last_success
    sync_result = event.get("sync_result") or {}
    diff = diff_images(step.images_before, step.images_after)
    return {
        "schema": records.DEPLOYMENT_V1,
        "app": app["name"],
        "app_namespace": app["namespace"],
        "project": step.project,
        "destination": step.destination,
        "revision": step.revision,
        "revisions": step.revisions,
        "previous_revision": last_success["revision"] if last_success else None,
        "previous_revisions": list(last_success["revisions"]) if last_success else [],
        "operation": step.operation,
        "health": event.get("health"),
        "initial": prior.initial,
        "rollback": rollback,
        "fingerprint": step.fingerprint,
        "images": step.images_after,
        "images_added": diff.added,
        "images_removed": diff.removed,
        "images_changed": diff.changed,
        "hook_images": result.hook_images,
        "resources_changed": result.resources_changed,
        "resources_unchanged": result.resources_unchanged,
        "failed_resources": result.failed_resources,
        "violations": [dict(v) for v in violations],
        "invalid_images": result.invalid_images,
        "source": sync_result.get("source"),
        "sources": list(sync_result.get("sources") or []),
        "received_at": event["received_at"],
        "delivery_id": step.delivery_id,
    }


def _history_after(
    history: Sequence[JsonObject],
    step: _Applied,
    violations: Sequence[Mapping[str, Any]],
    limit: int,
) -> list[JsonObject]:
    """``history`` with ``step`` appended, the newest ``limit`` entries."""
    entry = {
        "revision": step.revision,
        "revisions": step.revisions,
        "phase": step.phase,
        "fingerprint": step.fingerprint,
        "images": step.images_after,
        "started_at": step.operation["started_at"],
        "finished_at": step.operation["finished_at"],
        "delivery_id": step.delivery_id,
        "denied": any(v["rule"] == "denylist" for v in violations),
    }
    after = [*history, entry]
    del after[: max(0, len(after) - limit)]
    return after


def _deployment_metrics(
    prior: _Prior,
    step: _Applied,
    deployment: Mapping[str, Any],
    fresh: Sequence[Mapping[str, Any]],
    *,
    now: datetime,
) -> list[JsonObject]:
    """The deployment's metric, then one per violation reported for the first time."""
    app_key, project, delivery_id = step.app_key, step.project, step.delivery_id
    image_changes = (
        len(deployment["images_added"])
        + len(deployment["images_removed"])
        + len(deployment["images_changed"])
    )
    deployed = metric_event(
        "deployment",
        app_key,
        project,
        now,
        delivery_id=delivery_id,
        latency_seconds=step.latency,
        running_images=len(step.images_after),
        image_changes=image_changes,
        phase=step.phase,
        initial=prior.initial,
    )
    if not fresh:
        return [deployed]
    return [deployed] + [
        metric_event(
            "violation",
            app_key,
            project,
            now,
            delivery_id=delivery_id,
            rule=v["rule"],
            image=v["image"],
        )
        for v in fresh
    ]


def _dora_deployed(
    event: Mapping[str, Any],
    prior: _Prior,
    step: _Applied,
    deployment: Mapping[str, Any],
    ctx: Context,
    *,
    now: datetime,
) -> tuple[dora.History, list[JsonObject]]:
    """The app's DORA history with the announced ``deployment``, and what that changed."""
    history = dora.record_deployment(
        prior.dora,
        **dora.deployment_args(deployment),
        commits=dora.commits_of(event.get("commit")),
        limit=ctx.dora_history,
        failure_window_s=ctx.dora_failure_window_s,
    )
    findings = _dora_findings(
        prior.dora,
        history,
        ctx,
        app_key=step.app_key,
        project=step.project,
        delivery_id=step.delivery_id,
        now=now,
    )
    return history, findings


def _cdevent(
    prior: _Prior, deployment: Mapping[str, Any], ctx: Context
) -> tuple[JsonObject | None, list[str]]:
    """The deployment's CDEvent (``None`` when it has none) and the app's environments after
    it (:mod:`streams.domain.cdevents`). With CDEvents off the environments are still kept, so
    that turning them on later names the next deployment correctly."""
    known = cdevents.known_environments(prior.state)
    if not ctx.cdevents:
        return None, cdevents.environments_after(known, deployment)
    before = cdevents.deployed_before(known, deployment)
    event = cdevents.service_event(deployment, deployed_before=before, source=ctx.event_source)
    return event, cdevents.environments_after(known, deployment)


def _deployed(
    event: Mapping[str, Any],
    prior: _Prior,
    step: _Applied,
    history: list[JsonObject],
    rules: Sequence[Mapping[str, Any]],
    *,
    rollback: bool,
    now: datetime,
    ctx: Context,
) -> Decision:
    """A deployment: its record, the violations found first now, a remediation if denied."""
    violations = find_violations(
        step.images_after,
        rules,
        app=event["app"]["name"],
        app_namespace=event["app"]["namespace"],
        project=step.project,
        namespace=(step.destination or {}).get("namespace"),
    )
    fresh, flagged = _flag(_still_running(prior.flagged, step.images_after), violations)
    history_after = _history_after(history, step, violations, ctx.history_limit)
    deployment = _deployment_record(event, prior, step, violations, rollback=rollback)
    cdevent, environments = _cdevent(prior, deployment, ctx)
    state = _new_state(
        event,
        prior,
        step,
        history=history_after,
        flagged=flagged,
        environments=environments,
        now=now,
    )
    state["dora"], findings = _dora_deployed(event, prior, step, deployment, ctx, now=now)
    denied = [v for v in fresh if v["rule"] == "denylist"]
    delivery_id = step.delivery_id
    return Decision(
        DEPLOYED,
        step.app_key,
        state=state,
        deployment=deployment,
        violations=[
            _violation_record(state, v, detected="deploy", delivery_id=delivery_id, now=now)
            for v in fresh
        ],
        remediation=_remediation(
            state, denied, history_after[:-1], delivery_id=delivery_id, now=now
        )
        if denied
        else None,
        metrics=_deployment_metrics(prior, step, deployment, fresh, now=now) + findings,
        cdevent=cdevent,
    )


def decide(
    event: Mapping[str, Any],
    state: Mapping[str, Any] | None,
    rules: Sequence[Mapping[str, Any]],
    *,
    now: datetime,
    ctx: Context = Context(),
) -> Decision:
    """Decide what one validated sync event means for its app; see the module docstring.

    The steps: dedupe (:func:`_dedupe`), apply to the state (:func:`_apply`), classify
    (:func:`_classify`), then build the records (:func:`_resynced` or :func:`_deployed`).
    """
    app_key = app_key_of(event)
    prior = _prior_of(state)
    sr_sha = canonical_sha256(event.get("sync_result"))
    project = event["app"].get("project") or prior.project
    verdict = _dedupe(event, prior, sr_sha)
    if verdict == DUPLICATE:
        verdict = _transition_of(event, prior) or DUPLICATE
        if verdict == HEALTH_TRANSITION:
            return _health_changed(event, prior, app_key=app_key, project=project, now=now, ctx=ctx)
    if verdict:
        return _skipped(
            verdict,
            prior,
            app_key=app_key,
            project=project,
            delivery_id=event["delivery_id"],
            now=now,
        )
    step = _apply(event, prior, app_key=app_key, project=project, sr_sha=sr_sha, now=now)
    history = [dict(h) for h in prior.history]
    kind = _classify(prior, step, history)
    if kind == RESYNC:
        return _resynced(event, prior, step, history, now=now)
    return _deployed(
        event, prior, step, history, rules, rollback=kind == _ROLLBACK, now=now, ctx=ctx
    )


def recheck_policy(
    state: Mapping[str, Any],
    rules: Sequence[Mapping[str, Any]],
    *,
    now: datetime,
) -> Decision | None:
    """Re-check an app's running images against the rules in force (retroactive flags).

    Run when a rule is published; only violations not yet reported for this app are
    emitted, so replays and re-publications of the same rule emit nothing.
    """
    app_key = f"{state['app_namespace']}/{state['app']}"
    destination = state.get("destination") or {}
    hits = find_violations(
        state.get("images", []),
        rules,
        app=state["app"],
        app_namespace=state["app_namespace"],
        project=state.get("project"),
        namespace=destination.get("namespace"),
    )
    fresh, flagged = _flag(_still_running(state.get("flagged", {}), state.get("images", [])), hits)
    if not fresh:
        return None
    new_state = {**state, "flagged": flagged}
    history = [dict(h) for h in state.get("history", [])]
    denied = [v for v in fresh if v["rule"] == "denylist"]
    if denied and history:
        history[-1]["denied"] = True
        new_state["history"] = history
    return Decision(
        "flagged",
        app_key,
        state=new_state,
        violations=[
            _violation_record(new_state, v, detected="retroactive", delivery_id=None, now=now)
            for v in fresh
        ],
        remediation=_remediation(new_state, denied, history, delivery_id=None, now=now)
        if denied
        else None,
        metrics=[
            metric_event("violation", app_key, state.get("project"), now, rule=v["rule"])
            for v in fresh
        ],
    )
