"""The JSON Schemas in ``schemas/``, generated from the record types.

``python -m streams.domain.schemas`` writes ``schemas/<file>`` for every entry of
:data:`REGISTRY`; ``--check`` writes nothing and exits 1 naming the files that are stale
(``tests/test_contracts.py`` runs it, so ``make test`` fails on a schema nobody regenerated).

Each file is draft 2020-12 with the ``$id`` ``https://synctrail.dev/schemas/<file>``, the record's
version string as ``title`` (a tagged Struct's tag; otherwise ``synctrail.<name>/v<N>`` from the
file name) and the registry's description. msgspec's output is reshaped to read like a
hand-written schema: nested objects are inlined (a registry type nested in another is a ``$ref``
to its file), single-value enums are ``const``, ``X | None`` is ``"type": [X, "null"]``, and every
record Struct's object is closed (``additionalProperties: false``). The inbound contract's types
(:data:`INBOUND`, from ``streams.domain.inbound``) stay open: the bridge accepts unknown fields
anywhere, since Argo CD adds fields over time.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from streams.domain import inbound, records

DRAFT = "https://json-schema.org/draft/2020-12/schema"
ID_BASE = "https://synctrail.dev/schemas/"
SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"

#: (file name, type, description) of one schema file.
SchemaEntry = tuple[str, Any, str]

#: Every generated schema file. Add an entry here (e.g. the inbound types) to generate it.
REGISTRY: list[SchemaEntry] = [
    (
        "sync-event.v1.json",
        records.SyncEvent,
        "One accepted Argo CD webhook delivery on <prefix>sync-events, keyed by "
        "<app namespace>/<app name>.",
    ),
    (
        "policy-check.v1.json",
        records.PolicyCheck,
        "Control record written to every partition of <prefix>sync-events when a policy rule is "
        "published: each worker re-checks the apps it owns. Keyed by policy:<rule id>.",
    ),
    (
        "deployment.v1.json",
        records.Deployment,
        "One announced sync operation of one application on <prefix>deployments, keyed by "
        "<app namespace>/<app name>. Images are normalised Docker references.",
    ),
    (
        "notification.v1.json",
        records.Notification,
        "One Slack-ready message on <prefix>notifications, keyed by app. The connector posts "
        "each idempotency_key at most once.",
    ),
    (
        "metric.v1.json",
        records.Metric,
        "A metric event on <prefix>metrics for the exporter. Optional fields apply to the kinds "
        "named in their descriptions.",
    ),
    (
        "dora.v1.json",
        records.DoraEvent,
        "A DORA finding on <prefix>metrics for the exporter, keyed by app (docs/dora.md). "
        "Optional fields apply to the kinds named in their descriptions.",
    ),
    (
        "violation.v1.json",
        records.Violation,
        "One image that breaks one policy rule, on <prefix>violations, keyed by app. Reported "
        "once per (rule, image) while the app runs it.",
    ),
    (
        "remediation.v1.json",
        records.Remediation,
        "A rollback request on <prefix>remediations for an app that runs a denylisted image, "
        "keyed by app.",
    ),
    (
        "policy-rule.v1.json",
        records.PolicyRule,
        "A policy rule on the compacted <prefix>policy topic, keyed by rule id; a null value "
        "deletes the rule.",
    ),
    (
        "dead-letter.v1.json",
        records.DeadLetter,
        "A record that could not be processed, on <prefix>dead-letters, with the reason and the "
        "original.",
    ),
    (
        "slack-state.v1.json",
        records.SlackStateEntry,
        "The Slack connector's own state on <prefix>slack-state (compacted). Keyed by a "
        "notification's idempotency key (kinds intent, posted, dead_lettered), by "
        "`thread:<channel>:<ns/app>:<YYYY-MM-DD>` (kind thread) or by `channel:<channel>` (kind "
        "channel: the channel's Slack id). A null value deletes a key (state older than the "
        "retention).",
    ),
]

#: The inbound contract's schema files: generated like the records', but left open.
INBOUND: list[SchemaEntry] = list(inbound.SCHEMA_TYPES)

_REF = "#/$defs/"


def title_of(file_name: str, tp: Any) -> str:
    """The schema's title: the record's ``schema`` tag, else ``synctrail.<name>/v<N>``."""
    config = getattr(tp, "__struct_config__", None)
    if config is not None and isinstance(config.tag, str):
        return config.tag
    name, version = file_name.removesuffix(".json").rsplit(".", 1)
    return f"synctrail.{name}/{version}"


class _Shaper:
    """Turns msgspec's components into one self-contained schema per registry file."""

    def __init__(
        self, components: dict[str, Any], files: dict[str, str], *, closed: bool = True
    ) -> None:
        self.components = components
        self.files = files  # component name -> file name, for the registry's types
        self.closed = closed  # records are closed objects; the inbound contract is open

    def root(self, name: str) -> dict[str, Any]:
        return self._object(self.components[name])

    def _object(self, component: dict[str, Any]) -> dict[str, Any]:
        out = {k: self.shape(v) for k, v in component.items() if k not in ("title", "description")}
        if out.get("required") == []:
            del out["required"]
        if self.closed and out.get("type") == "object" and "properties" in out:
            out["additionalProperties"] = False
        return out

    def shape(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.shape(item) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_REF):
            name = ref.removeprefix(_REF)
            if name in self.files:
                return {"$ref": self.files[name]}
            nested = self._object(self.components[name])
            if "description" in self.components[name]:
                nested = {"description": self.components[name]["description"], **nested}
            return nested
        out = {key: self.shape(value) for key, value in node.items()}
        enum = out.get("enum")
        if isinstance(enum, list) and len(enum) == 1:
            out["const"] = out.pop("enum")[0]
        options = out.get("anyOf")
        if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
            (other,) = [o for o in options if o != {"type": "null"}]
            if isinstance(other.get("type"), str):
                del out["anyOf"]
                out = {**out, **other, "type": [other["type"], "null"]}
        return out


def generate(
    registry: Sequence[SchemaEntry] = REGISTRY, open_registry: Sequence[SchemaEntry] = INBOUND
) -> dict[str, dict[str, Any]]:
    """The schema of every entry, by file name: ``registry``'s closed, ``open_registry``'s open
    (each set generated apart, so a type name both use, e.g. ``Operation``, cannot collide)."""
    out = _generate(registry, closed=True)
    out.update(_generate(open_registry, closed=False))
    return out


def _generate(registry: Sequence[SchemaEntry], *, closed: bool) -> dict[str, dict[str, Any]]:
    if not registry:
        return {}
    types = [tp for _, tp, _ in registry]
    refs, components = msgspec.json.schema_components(types, ref_template=_REF + "{name}")
    names = [ref["$ref"].removeprefix(_REF) for ref in refs]
    shaper = _Shaper(
        components,
        {name: entry[0] for name, entry in zip(names, registry, strict=True)},
        closed=closed,
    )
    out: dict[str, dict[str, Any]] = {}
    for ref, name, (file_name, tp, description) in zip(refs, names, registry, strict=True):
        # an Annotated root's own keywords (e.g. the bare body's `not`) sit beside its $ref
        extra = {k: shaper.shape(v) for k, v in ref.items() if k != "$ref"}
        out[file_name] = {
            "$schema": DRAFT,
            "$id": ID_BASE + file_name,
            "title": title_of(file_name, tp),
            "description": description,
            **shaper.root(name),
            **extra,
        }
    return out


def render(schema: dict[str, Any]) -> str:
    """A schema file's text: two-space indented JSON and a final newline."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def stale_files(
    directory: Path = SCHEMAS_DIR,
    registry: Sequence[SchemaEntry] = REGISTRY,
    open_registry: Sequence[SchemaEntry] = INBOUND,
) -> list[str]:
    """The files in ``directory`` that differ from what the types generate (or are missing)."""
    stale = []
    for file_name, schema in generate(registry, open_registry).items():
        path = directory / file_name
        if not path.exists() or path.read_text() != render(schema):
            stale.append(file_name)
    return stale


def write(
    directory: Path = SCHEMAS_DIR,
    registry: Sequence[SchemaEntry] = REGISTRY,
    open_registry: Sequence[SchemaEntry] = INBOUND,
) -> list[str]:
    """Write every schema file; returns the names of the files that changed."""
    changed = stale_files(directory, registry, open_registry)
    for file_name, schema in generate(registry, open_registry).items():
        if file_name in changed:
            (directory / file_name).write_text(render(schema))
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streams.domain.schemas",
        description="Generate schemas/*.json from the record types in streams/domain.",
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file is stale"
    )
    parser.add_argument("--dir", type=Path, default=SCHEMAS_DIR, help="the schemas directory")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.dir)
        for name in stale:
            print(f"stale: {args.dir / name} (run python -m streams.domain.schemas)")
        return 1 if stale else 0
    for name in write(args.dir):
        print(f"wrote {args.dir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
