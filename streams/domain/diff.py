"""Image diffs between two image sets, fingerprints and canonical hashes (pure).

``diff_images`` groups references by normalised repository (docs/derivation.md, "The diff"):
a repository running only after the operation is *added*, only before it *removed*, and on
both sides with another tag or digest *changed* (``from`` → ``to``).

A repository may run with several references at once (two Deployments pinning different
tags). The diff then compares the *set* of references per repository: references on both sides
are not reported; those only before are paired with those only after as ``changed`` entries
(same tag first - a re-pushed tag with a new digest - then in sorted order), and whatever is
left unpaired is ``removed`` or ``added`` as a single reference. With one reference per
repository - the usual case - this is the plain rule above. It keeps three properties the tests
check: ``diff(a, a)`` is empty, swapping the sides swaps added/removed and from/to, and
``apply_diff(a, diff(a, b)) == set(b)``.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from streams.domain.images import ImageRef, InvalidImageReference, parse_image


@dataclass(frozen=True, slots=True)
class ImageDiff:
    """What changed between two image sets.

    ``added`` and ``removed`` are sorted normalised references; ``changed`` is sorted by
    repository, then ``from``.
    """

    added: list[str]
    removed: list[str]
    changed: list[dict[str, str]]

    @property
    def is_empty(self) -> bool:
        """True when nothing was added, removed or changed."""
        return not (self.added or self.removed or self.changed)


def _parsed(reference: str) -> tuple[str, str]:
    """(repository, normalised reference); references that do not parse group by themselves."""
    try:
        ref = parse_image(reference)
    except InvalidImageReference:
        return reference, reference
    return ref.repository, str(ref)


def _by_repository(images: Iterable[str]) -> dict[str, set[str]]:
    groups: dict[str, set[str]] = defaultdict(set)
    for image in images:
        repository, normalised = _parsed(image)
        groups[repository].add(normalised)
    return groups


def _tag_of(reference: str) -> str | None:
    try:
        ref: ImageRef = parse_image(reference)
    except InvalidImageReference:
        return None
    return ref.tag


def _pair(gone: set[str], new: set[str]) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """Pair references that left with references that arrived in one repository.

    Symmetric by construction: ``_pair(new, gone)`` gives the same pairs flipped.
    """
    pairs: list[tuple[str, str]] = []
    gone_left, new_left = sorted(gone), sorted(new)
    tags = {_tag_of(r) for r in gone_left} & {_tag_of(r) for r in new_left}
    for tag in sorted(t for t in tags if t is not None):
        olds = [r for r in gone_left if _tag_of(r) == tag]
        news = [r for r in new_left if _tag_of(r) == tag]
        for old, fresh in zip(olds, news, strict=False):
            pairs.append((old, fresh))
            gone_left.remove(old)
            new_left.remove(fresh)
    for old, fresh in zip(list(gone_left), list(new_left), strict=False):
        pairs.append((old, fresh))
        gone_left.remove(old)
        new_left.remove(fresh)
    return pairs, gone_left, new_left


def diff_images(before: Iterable[str], after: Iterable[str]) -> ImageDiff:
    """Diff two image sets by normalised repository (see the module docstring)."""
    old, new = _by_repository(before), _by_repository(after)
    added: list[str] = []
    removed: list[str] = []
    changed: list[dict[str, str]] = []
    for repository in sorted(old.keys() | new.keys()):
        was, now = old.get(repository, set()), new.get(repository, set())
        if was == now:
            continue
        pairs, gone, arrived = _pair(was - now, now - was)
        changed += [{"repository": repository, "from": a, "to": b} for a, b in sorted(pairs)]
        removed += gone
        added += arrived
    # added/removed sort like ``images`` (plain string order); changed by repository, then from.
    return ImageDiff(added=sorted(added), removed=sorted(removed), changed=changed)


def apply_diff(before: Iterable[str], diff: ImageDiff) -> set[str]:
    """The image set ``diff`` turns ``before`` into (normalised references)."""
    images = {_parsed(image)[1] for image in before}
    images -= set(diff.removed)
    images |= set(diff.added)
    for change in diff.changed:
        images.discard(change["from"])
        images.add(change["to"])
    return images


def fingerprint(revision: str, revisions: Sequence[str], images: Iterable[str]) -> str:
    """``sha256:<hex>`` of what an app runs: revision, revisions in order, sorted images."""
    payload = orjson.dumps([revision, list(revisions), sorted(set(images))])
    return "sha256:" + hashlib.sha256(payload).hexdigest()


def canonical_sha256(value: Any) -> str:
    """Hex sha256 of ``value`` as JSON with sorted keys (equal JSON values hash equal)."""
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()
