"""Image policy: deny and allow rules, loading them, matching images against them (pure).

A rule is a plain dict shaped like ``streams.domain.records.PolicyRule``::

    {"id", "kind": "deny" | "allow", "reason",
     "image": <deny pattern> | None, "patterns": [<allow pattern>, ...] | None,
     "apps": glob, "projects": glob, "namespaces": glob}

Deny patterns (``image``), normalised like image references (``nginx:1.25`` →
``docker.io/library/nginx:1.25``):

* an exact reference: ``docker.io/library/nginx:1.25.0``; a tag given with a digest matches
  that digest (and that tag);
* a repository glob with an optional tag glob: ``ghcr.io/acme/*:*-debug``. Without a tag the
  pattern matches every tag of the repository (``nginx`` denies all of nginx, ``nginx:latest``
  only ``latest``). ``*`` spans ``/``; a digest-only image has the empty tag;
* a digest, bare (``sha256:…``: any image with that digest) or with a repository
  (``repo@sha256:…``).

Allow patterns: an entry without ``/`` is a registry glob (``registry.local:5000``,
``*.acme.io``), one with ``/`` a repository glob (``ghcr.io/acme/*``; ``acme/*`` means Docker
Hub). An allow rule applies to the apps, projects and destination namespaces its globs match
(the app glob is tried on ``ns/name`` and on ``name``); an image that no applicable allow rule
permits is a violation of rule ``unexpected``. No applicable allow rule: nothing is unexpected.
Deny rules honour the same scope globs (all ``*`` by default).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any

import yaml

from streams.domain.images import (
    DEFAULT_REGISTRY,
    LEGACY_DEFAULT_REGISTRY,
    ImageRef,
    InvalidImageReference,
    parse_image,
    split_reference,
    split_registry,
    validate_digest,
)

DENYLIST = "denylist"
UNEXPECTED = "unexpected"
SCOPES = ("apps", "projects", "namespaces")
_GLOB_CHARS = frozenset("*?[")
_BARE_DIGEST_RE = re.compile(r"@?(sha256|sha384|sha512):[0-9a-fA-F]+")
_NAME_GLOB_RE = re.compile(r"[A-Za-z0-9._\-/:\[\]*?!]+")
_TAG_GLOB_RE = re.compile(r"[A-Za-z0-9_.\-*?\[\]!]+")
_REGISTRY_GLOB_RE = re.compile(r"[A-Za-z0-9.\-:\[\]*?!]+")
_DEFAULT_UNEXPECTED_REASON = "image outside the registries and repositories allowed for this app"

_DENY_KEYS = {"id", "kind", "image", "reason", *SCOPES, "schema", "created_at", "patterns"}
_ALLOW_KEYS = {"id", "kind", "patterns", "registries", "repositories", "reason", *SCOPES}
_ALLOW_KEYS |= {"schema", "created_at", "image"}


class PolicyError(ValueError):
    """A policy rule or file that cannot be used; ``field`` says where."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True, slots=True)
class ImagePattern:
    """A parsed deny pattern; ``repository is None`` for a bare digest."""

    repository: str | None
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        if self.repository is None:
            return self.digest or ""
        text = self.repository
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    def matches(self, ref: ImageRef) -> bool:
        """Whether the (parsed, normalised) image falls under this pattern."""
        if self.digest is not None and ref.digest != self.digest:
            return False
        if self.repository is not None and not fnmatchcase(ref.repository, self.repository):
            return False
        return self.tag is None or fnmatchcase(ref.tag or "", self.tag)


def _has_glob(text: str) -> bool:
    return not _GLOB_CHARS.isdisjoint(text)


def normalize_repository_glob(name: str) -> str:
    """Apply Docker's registry/``library/`` defaults to a repository glob.

    A first segment holding glob characters is a registry glob (``*/acme/*``), and a name of
    only ``*`` stands for every repository.
    """
    first, slash, rest = name.partition("/")
    if not slash:
        if set(name) == {"*"}:
            return name
        return "/".join(split_registry(name))
    if _has_glob(first):
        return f"{DEFAULT_REGISTRY}/{rest}" if first == LEGACY_DEFAULT_REGISTRY else name
    return "/".join(split_registry(name))


@lru_cache(maxsize=4096)
def parse_image_pattern(text: str) -> ImagePattern:
    """Parse a deny pattern (see the module docstring); raise ``ValueError`` if it is bad."""
    if not text.strip():
        raise ValueError("expected a non-empty image reference, glob or digest")
    text = text.strip()
    if any(c.isspace() for c in text):
        raise ValueError(f"{text!r} contains whitespace")
    if _BARE_DIGEST_RE.fullmatch(text):
        bare = text.removeprefix("@")
        try:
            validate_digest(text, bare)
        except InvalidImageReference as exc:
            raise ValueError(exc.problem) from None
        return ImagePattern(repository=None, tag=None, digest=bare)
    name, tag, digest = split_reference(text)
    if not _has_glob(text):
        try:
            ref = parse_image(text)
        except InvalidImageReference as exc:
            raise ValueError(exc.problem) from None
        # The written tag, not parse_image's ``latest`` default: no tag means every tag.
        return ImagePattern(repository=ref.repository, tag=tag, digest=ref.digest)
    if not name or not _NAME_GLOB_RE.fullmatch(name):
        raise ValueError(f"repository glob {name!r} has characters an image name cannot have")
    repository = normalize_repository_glob(name)
    path = repository.partition("/")[2]
    if path != path.lower():
        raise ValueError(f"repository path {path!r} must be lower-case")
    if tag is not None and not _TAG_GLOB_RE.fullmatch(tag):
        raise ValueError(f"tag glob {tag!r} has characters a tag cannot have")
    if digest is not None:
        if _has_glob(digest):
            raise ValueError("a digest cannot be a glob")
        try:
            validate_digest(text, digest)
        except InvalidImageReference as exc:
            raise ValueError(exc.problem) from None
    return ImagePattern(repository=repository, tag=tag, digest=digest)


@lru_cache(maxsize=4096)
def normalize_allow_pattern(text: str, as_: str = "auto") -> str:
    """Normalise an allow pattern: a registry glob or a repository glob.

    ``as_`` is ``"registry"``, ``"repository"`` or ``"auto"`` (a ``/`` makes a repository).
    A repository glob without a registry is on Docker Hub (``nginx`` →
    ``docker.io/library/nginx``); ``*`` alone allows everything.
    """
    if not text.strip():
        raise ValueError("expected a non-empty registry or repository glob")
    text = text.strip()
    if as_ == "registry" or (as_ == "auto" and "/" not in text):
        if not _REGISTRY_GLOB_RE.fullmatch(text):
            raise ValueError(f"registry {text!r} is not a host[:port] glob")
        registry = text.lower()
        return DEFAULT_REGISTRY if registry == LEGACY_DEFAULT_REGISTRY else registry
    name, tag, digest = split_reference(text)
    if tag is not None or digest is not None:
        raise ValueError(f"repository {text!r}: a repository takes no tag or digest")
    if not _NAME_GLOB_RE.fullmatch(name):
        raise ValueError(f"repository glob {name!r} has characters an image name cannot have")
    repository = normalize_repository_glob(name)
    path = repository.partition("/")[2]
    if path != path.lower():
        raise ValueError(f"repository {text!r}: the path must be lower-case")
    if not _has_glob(repository):
        try:
            parse_image(repository)
        except InvalidImageReference as exc:
            raise ValueError(exc.problem) from None
    return repository


def allows(pattern: str, ref: ImageRef) -> bool:
    """Whether one normalised allow pattern permits the image."""
    if "/" not in pattern:
        return fnmatchcase(ref.registry.lower(), pattern)
    return fnmatchcase(ref.repository, pattern)


def _scope_text(rule: Mapping[str, Any]) -> str:
    return ";".join(f"{s}={rule.get(s, '*')}" for s in SCOPES if rule.get(s, "*") != "*")


def _id_of(normalised: Mapping[str, Any]) -> str:
    scope = _scope_text(normalised)
    if normalised["kind"] == "deny":
        return f"deny:{normalised['image']}" + (f"|{scope}" if scope else "")
    return f"allow:{scope or '*'}|{','.join(normalised['patterns'])}"


def _as_list(value: Any, field: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return value
    raise PolicyError(field, f"expected a string or a list of strings, got {type(value).__name__}")


def _normalise(rule: Mapping[str, Any]) -> dict[str, Any]:
    """Every field of a rule checked and normalised; ``id`` left as given (maybe absent)."""
    if not isinstance(rule, Mapping):
        raise PolicyError("rule", f"expected a mapping, got {type(rule).__name__}")
    kind = rule.get("kind")
    if kind not in ("deny", "allow"):
        raise PolicyError("kind", f"expected 'deny' or 'allow', got {kind!r}")
    allowed = _DENY_KEYS if kind == "deny" else _ALLOW_KEYS
    for key in rule:
        if key not in allowed:
            raise PolicyError(str(key), f"unknown field for a {kind} rule")
    out: dict[str, Any] = {"kind": kind}
    for scope in SCOPES:
        value = rule.get(scope, "*")
        if value is None:
            value = "*"
        if not isinstance(value, str) or not value.strip():
            raise PolicyError(scope, f"expected a non-empty glob string, got {value!r}")
        out[scope] = value.strip()
    reason = rule.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise PolicyError("reason", f"expected a string, got {type(reason).__name__}")
    out["reason"] = (reason or "").strip()
    if kind == "deny":
        if not out["reason"]:
            raise PolicyError("reason", "a deny rule needs a reason (it is shown with the alert)")
        if rule.get("patterns"):
            raise PolicyError("patterns", "a deny rule has an image, not patterns")
        image = rule.get("image")
        if not isinstance(image, str):
            raise PolicyError(
                "image", f"expected an image reference, glob or digest, got {image!r}"
            )
        try:
            out["image"] = str(parse_image_pattern(image))
        except ValueError as exc:
            raise PolicyError("image", str(exc)) from None
        out["patterns"] = None
    else:
        if rule.get("image") is not None:
            raise PolicyError("image", "an allow rule has registries/repositories, not an image")
        patterns: set[str] = set()
        for field, as_ in (
            ("patterns", "auto"),
            ("registries", "registry"),
            ("repositories", "repository"),
        ):
            for i, item in enumerate(_as_list(rule.get(field), field)):
                if not isinstance(item, str):
                    raise PolicyError(f"{field}[{i}]", f"expected a string, got {item!r}")
                try:
                    patterns.add(normalize_allow_pattern(item, as_))
                except ValueError as exc:
                    raise PolicyError(f"{field}[{i}]", str(exc)) from None
        if not patterns:
            raise PolicyError("registries", "an allow rule needs registries or repositories")
        out["image"] = None
        out["patterns"] = sorted(patterns)
    rule_id = rule.get("id")
    if rule_id is not None and (not isinstance(rule_id, str) or not rule_id.strip()):
        raise PolicyError("id", f"expected a non-empty string, got {rule_id!r}")
    if rule_id is not None:
        out["id"] = rule_id.strip()
    if rule.get("created_at") is not None:
        out["created_at"] = rule["created_at"]
    return out


def rule_id_for(rule: Mapping[str, Any]) -> str:
    """The deterministic id of a rule without an explicit one (e.g. ``deny:<pattern>``)."""
    return _id_of(_normalise(rule))


def validate_rule(rule: Mapping[str, Any]) -> dict[str, Any]:
    """Check and normalise one rule; raise ``PolicyError`` naming the bad field.

    Returns ``{id, kind, reason, image, patterns, apps, projects, namespaces}`` (plus
    ``created_at`` when given). Allow rules may be written with ``registries`` and
    ``repositories``; both end up in ``patterns``.
    """
    out = _normalise(rule)
    out.setdefault("id", _id_of(out))
    return out


def load_policy_file(text: str) -> list[dict[str, Any]]:
    """Parse a policy YAML document (``deny:`` and ``allow:`` lists) into validated rules."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError("policy file", f"not valid YAML: {exc}") from None
    if document is None:
        return []
    if not isinstance(document, dict):
        raise PolicyError("policy file", "expected a mapping with 'deny' and/or 'allow' lists")
    for key in document:
        if key not in ("deny", "allow"):
            raise PolicyError(str(key), "unknown top-level key (expected 'deny' or 'allow')")
    rules: list[dict[str, Any]] = []
    where: dict[str, str] = {}
    for kind in ("deny", "allow"):
        entries = document.get(kind) or []
        if not isinstance(entries, list):
            raise PolicyError(kind, "expected a list of rules")
        for i, entry in enumerate(entries):
            place = f"{kind}[{i}]"
            if not isinstance(entry, dict):
                raise PolicyError(place, "expected a mapping")
            if "kind" in entry:
                raise PolicyError(f"{place}.kind", "the list the rule is in gives its kind")
            try:
                rule = validate_rule({**entry, "kind": kind})
            except PolicyError as exc:
                raise PolicyError(f"{place}.{exc.field}", exc.problem) from None
            if rule["id"] in where:
                raise PolicyError(
                    f"{place}.id", f"duplicate rule id {rule['id']!r} (also {where[rule['id']]})"
                )
            where[rule["id"]] = place
            rules.append(rule)
    return rules


def rule_applies(
    rule: Mapping[str, Any],
    *,
    app: str,
    app_namespace: str,
    project: str | None,
    namespace: str | None,
) -> bool:
    """Whether a rule's app/project/namespace globs cover this app (missing values are "")."""
    apps = rule.get("apps") or "*"
    if not (fnmatchcase(f"{app_namespace}/{app}", apps) or fnmatchcase(app, apps)):
        return False
    return fnmatchcase(project or "", rule.get("projects") or "*") and fnmatchcase(
        namespace or "", rule.get("namespaces") or "*"
    )


def _in_scope(rule: _Compiled, qualified: str, app: str, project: str, namespace: str) -> bool:
    if rule.apps != "*" and not (fnmatchcase(qualified, rule.apps) or fnmatchcase(app, rule.apps)):
        return False
    return (rule.projects == "*" or fnmatchcase(project, rule.projects)) and (
        rule.namespaces == "*" or fnmatchcase(namespace, rule.namespaces)
    )


def _refs(images: Iterable[str]) -> list[tuple[str, ImageRef]]:
    """(normalised reference, parsed) per valid image, de-duplicated, sorted."""
    refs = {}
    for image in images:
        try:
            ref = parse_image(image)
        except InvalidImageReference:
            continue  # reported as invalid_images where it was listed
        refs[str(ref)] = ref
    return sorted(refs.items())


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A validated rule ready for matching."""

    id: str
    kind: str
    reason: str
    pattern: ImagePattern | None  # deny
    patterns: tuple[str, ...]  # allow
    apps: str
    projects: str
    namespaces: str

    def allows(self, ref: ImageRef) -> bool:
        return any(allows(p, ref) for p in self.patterns)


_MATCH_FIELDS = ("id", "kind", "reason", "image", "patterns", *SCOPES)


def _compile(rule: Mapping[str, Any]) -> _Compiled | None:
    """A rule ready for matching, or ``None`` if it does not validate. Only the fields that
    matter for matching are read (bookkeeping such as ``schema``/``created_at`` is ignored)."""
    try:
        normalised = _normalise({k: rule[k] for k in _MATCH_FIELDS if k in rule})
    except PolicyError:
        return None
    return _Compiled(
        id=rule.get("id") or _id_of(normalised),
        kind=normalised["kind"],
        reason=normalised["reason"],
        pattern=parse_image_pattern(normalised["image"]) if normalised["kind"] == "deny" else None,
        patterns=tuple(normalised["patterns"] or ()),
        apps=normalised["apps"],
        projects=normalised["projects"],
        namespaces=normalised["namespaces"],
    )


@lru_cache(maxsize=1024)
def _compile_cached(key: tuple[Any, ...]) -> _Compiled | None:
    fields = dict(zip(_MATCH_FIELDS, key, strict=True))
    if isinstance(fields["patterns"], tuple):
        fields["patterns"] = list(fields["patterns"])
    return _compile(fields)


def _usable(rules: Iterable[Mapping[str, Any]]) -> list[_Compiled]:
    """Rules compiled for matching; one that does not validate is left out rather than crash a
    worker (rules are validated before they are published: this only guards against garbage).

    Every event is checked against every rule, so compiled rules are cached by content.
    """
    usable = []
    for rule in rules:
        if not isinstance(rule, Mapping):
            continue
        compiled: _Compiled | None
        get = rule.get
        patterns = get("patterns")
        # Missing and None mean the same for every matching field, so get() is a fine key.
        key = (
            get("id"),
            get("kind"),
            get("reason"),
            get("image"),
            tuple(patterns) if isinstance(patterns, list) else patterns,
            get("apps"),
            get("projects"),
            get("namespaces"),
        )
        try:
            compiled = _compile_cached(key)
        except TypeError:  # an unhashable value: compile without the cache
            compiled = _compile(rule)
        if compiled is not None:
            usable.append(compiled)
    return usable


def images_matching_rule(rule: Mapping[str, Any], images: Iterable[str]) -> list[str]:
    """The normalised images a rule matches, ignoring its scope globs.

    Deny: the images it denies (for flagging apps already running them). Allow: the images it
    permits. An invalid rule matches nothing.
    """
    usable = _usable([rule])
    if not usable:
        return []
    compiled = usable[0]
    refs = _refs(images)
    if compiled.pattern is not None:
        return [image for image, ref in refs if compiled.pattern.matches(ref)]
    return [image for image, ref in refs if compiled.allows(ref)]


def find_violations(
    images: Iterable[str],
    rules: Iterable[Mapping[str, Any]],
    *,
    app: str,
    app_namespace: str,
    project: str | None,
    namespace: str | None,
) -> list[dict[str, str]]:
    """Every policy violation of an app's images, sorted by (image, rule_id).

    Each is ``{"rule": "denylist" | "unexpected", "rule_id", "image", "reason"}``. An image
    outside every applicable allow rule gives one ``unexpected`` violation, attributed to the
    applicable allow rule with the smallest id.
    """
    rules = list(rules)
    if not rules:
        return []
    qualified = f"{app_namespace}/{app}"
    applicable = [
        r for r in _usable(rules) if _in_scope(r, qualified, app, project or "", namespace or "")
    ]
    denies = [r for r in applicable if r.pattern is not None]
    allow_rules = sorted((r for r in applicable if r.kind == "allow"), key=lambda r: r.id)
    found: dict[tuple[str, str], dict[str, str]] = {}
    for image, ref in _refs(images):
        for rule in denies:
            if rule.pattern is not None and rule.pattern.matches(ref):
                found[(image, rule.id)] = {
                    "rule": DENYLIST,
                    "rule_id": rule.id,
                    "image": image,
                    "reason": rule.reason,
                }
        if allow_rules and not any(rule.allows(ref) for rule in allow_rules):
            first = allow_rules[0]
            found[(image, first.id)] = {
                "rule": UNEXPECTED,
                "rule_id": first.id,
                "image": image,
                "reason": first.reason or _DEFAULT_UNEXPECTED_REASON,
            }
    return [found[k] for k in sorted(found)]
