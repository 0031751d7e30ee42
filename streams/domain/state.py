"""Per-app resource state and what one sync operation does to it (pure).

The state of an app is plain JSON: resource key ``"{group}/{kind}/{namespace}/{name}"`` →
the sorted, de-duplicated, normalised images of that live non-hook resource (``[]`` for
resources without containers). ``apply_operation`` folds one ``syncResult`` into it following
docs/derivation.md, "Resource state":

* ``Synced``       → the resource's images become the listed ones (none without ``images``);
* ``Pruned``       → the resource is gone (its entry still lists the image it was running);
* ``PruneSkipped`` → still running with the listed (live) images;
* ``SyncFailed``   → unchanged (the new spec was not applied);
* not listed       → unchanged: absence never means removal.

Entries without a ``status`` (Argo CD leaves the key out when empty; gitops-engine never
records a result without a code for a non-hook resource today) are treated as "not known to be
applied": state unchanged, reported as ``change_unknown``. A hook without a ``status`` (older
gitops-engine versions cleared it once the hook's health was read) counts as run unless its
``hookPhase`` is ``Failed`` or ``Error``.

Hooks (``hookType`` set) never enter the state: their images are reported apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from streams.domain.images import InvalidImageReference, normalize_image

Resources = dict[str, list[str]]

SYNCED = "Synced"
SYNC_FAILED = "SyncFailed"
PRUNED = "Pruned"
PRUNE_SKIPPED = "PruneSkipped"

CREATED = "created"
CONFIGURED = "configured"
REPLACED = "replaced"
UNCHANGED = "unchanged"
CHANGE_PRUNED = "pruned"
CHANGE_PRUNE_SKIPPED = "prune_skipped"
CHANGE_SYNC_FAILED = "sync_failed"
CHANGE_UNKNOWN = "change_unknown"

# The verb kubectl prints last ("configmap/x created", "... reconciled. ... unchanged").
# Anything else - server-side apply's "serverside-applied", a health message that replaced
# kubectl's output - does not say whether the object changed.
_KUBECTL_VERBS = {
    "created": CREATED,
    "configured": CONFIGURED,
    "replaced": REPLACED,
    "unchanged": UNCHANGED,
}
_STATUS_CHANGES = {
    PRUNED: CHANGE_PRUNED,
    PRUNE_SKIPPED: CHANGE_PRUNE_SKIPPED,
    SYNC_FAILED: CHANGE_SYNC_FAILED,
}


@dataclass(frozen=True, slots=True)
class AppliedOperation:
    """The state after one operation, and what the operation touched."""

    resources: Resources
    hook_images: list[str]
    resources_changed: list[dict[str, Any]]
    resources_unchanged: int
    failed_resources: list[dict[str, Any]]
    invalid_images: list[dict[str, str]]


def _text(entry: Mapping[str, Any], field: str) -> str:
    value = entry.get(field)
    return value if isinstance(value, str) else ""


def _identity(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {f: _text(entry, f) for f in ("group", "version", "kind", "namespace", "name")}


def _key_of(identity: Mapping[str, str]) -> str:
    return f"{identity['group']}/{identity['kind']}/{identity['namespace']}/{identity['name']}"


def resource_key(entry: Mapping[str, Any]) -> str:
    """``"{group}/{kind}/{namespace}/{name}"``; group and namespace may be empty."""
    return _key_of(_identity(entry))


def is_hook(entry: Mapping[str, Any]) -> bool:
    """Hooks are the entries with a ``hookType``."""
    return bool(entry.get("hookType"))


def listed_images(entry: Mapping[str, Any]) -> list[str]:
    """The raw ``images`` of an entry (``[]`` without the key), strings only."""
    images = entry.get("images")
    if not isinstance(images, list):
        return []
    return [i for i in images if isinstance(i, str)]


def classify_change(entry: Mapping[str, Any]) -> str:
    """The change category of an entry, from its ``status`` and its message's last line.

    One of created, configured, replaced, unchanged, pruned, prune_skipped, sync_failed or
    change_unknown. Only ever a statement about the object, never about its images.
    """
    status = entry.get("status")
    if status in _STATUS_CHANGES:
        return _STATUS_CHANGES[status]
    if status != SYNCED:
        return CHANGE_UNKNOWN
    lines = [line.strip() for line in _text(entry, "message").splitlines() if line.strip()]
    if not lines:
        return CHANGE_UNKNOWN
    # Replace=true,Force=true prints 'x "n" deleted' then 'x/n replaced': the last line counts;
    # RBAC objects print 'x/n reconciled. ... x/n unchanged' on one line: its last word counts.
    return _KUBECTL_VERBS.get(lines[-1].rsplit(None, 1)[-1], CHANGE_UNKNOWN)


def _normalised(key: str, raw_images: Iterable[str], invalid: list[dict[str, str]]) -> list[str]:
    images: set[str] = set()
    for raw in raw_images:
        try:
            images.add(normalize_image(raw))
        except InvalidImageReference as exc:
            invalid.append({"resource": key, "image": raw, "error": str(exc)})
    return sorted(images)


def _hook_ran(entry: Mapping[str, Any]) -> bool:
    status = entry.get("status")
    if status is None:
        return entry.get("hookPhase") not in ("Failed", "Error")
    return status == SYNCED


def _failed(entry: Mapping[str, Any], identity: Mapping[str, str]) -> dict[str, Any]:
    message = entry.get("message")
    hook_type = entry.get("hookType")
    return {
        **identity,
        "message": message if isinstance(message, str) else None,
        "hook_type": hook_type if isinstance(hook_type, str) and hook_type else None,
        "images": listed_images(entry),
    }


def _changed(entry: Mapping[str, Any], identity: Mapping[str, str], change: str) -> dict[str, Any]:
    message = entry.get("message")
    return {
        **identity,
        "change": change,
        "message": message if isinstance(message, str) else None,
    }


def sync_result_entries(sync_result: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """The ``resources`` of a syncResult, objects only; ``[]`` when there are none."""
    if not isinstance(sync_result, Mapping):
        return []
    resources = sync_result.get("resources")
    if not isinstance(resources, list):
        return []
    return [r for r in resources if isinstance(r, Mapping)]


def apply_operation(
    before: Mapping[str, list[str]], sync_result: Mapping[str, Any] | None
) -> AppliedOperation:
    """Fold one operation's ``syncResult`` into an app's resource state (see the module docstring).

    ``before`` is not modified. Entries are applied in payload order, so a resource listed
    twice ends as its last entry says. Invalid image references are reported in
    ``invalid_images`` and left out of the state, never raised.
    """
    resources: Resources = {key: list(images) for key, images in before.items()}
    hook_images: set[str] = set()
    changed: list[dict[str, Any]] = []
    unchanged = 0
    failed: list[dict[str, Any]] = []
    invalid: list[dict[str, str]] = []

    for entry in sync_result_entries(sync_result):
        identity = _identity(entry)
        key = _key_of(identity)
        status = entry.get("status")
        if status == SYNC_FAILED:
            failed.append(_failed(entry, identity))
        if is_hook(entry):
            # Hooks are transient (renamed every sync): reported, never part of the state.
            if _hook_ran(entry):
                hook_images.update(_normalised(key, listed_images(entry), invalid))
            continue
        if status in (SYNCED, PRUNE_SKIPPED):
            resources[key] = _normalised(key, listed_images(entry), invalid)
        elif status == PRUNED:
            resources.pop(key, None)
        change = classify_change(entry)
        if change == UNCHANGED:
            unchanged += 1
        else:
            changed.append(_changed(entry, identity, change))

    return AppliedOperation(
        resources=resources,
        hook_images=sorted(hook_images),
        resources_changed=changed,
        resources_unchanged=unchanged,
        failed_resources=failed,
        invalid_images=invalid,
    )


def running_images(resources: Mapping[str, list[str]]) -> list[str]:
    """Every image the app runs: sorted, de-duplicated over all its resources."""
    return sorted({image for images in resources.values() for image in images})


def outcome_of_bare(sync_result: Mapping[str, Any] | None) -> str:
    """The outcome of a bare body: ``Failed`` if any entry has ``SyncFailed``, else ``Succeeded``."""
    entries = sync_result_entries(sync_result)
    return "Failed" if any(e.get("status") == SYNC_FAILED for e in entries) else "Succeeded"
