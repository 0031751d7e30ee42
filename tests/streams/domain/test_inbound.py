"""The inbound contract's types: purity, name rules, the JSON Schemas made from them, the docs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import orjson
import pytest
from jsonschema import Draft202012Validator

from streams.domain.inbound import (
    SCHEMA_TYPES,
    SYNC_RESULT_KEYS,
    Envelope,
    SyncResult,
    name_problem,
    namespace_problem,
)
from tests.contracts import schema_registry
from tests.support import SHARED_FIXTURES, load_expected

REPO = Path(__file__).resolve().parents[3]
# the generated files (python -m streams.domain.schemas; tests/test_contracts.py keeps them current)
SCHEMAS = {
    file_name: json.loads((REPO / "schemas" / file_name).read_text())
    for file_name, _, _ in SCHEMA_TYPES
}
SHAPE_SCHEMA = {"envelope": "envelope.v1.json", "bare": "sync-result.v1.json"}


def validator(file_name: str) -> Draft202012Validator:
    return Draft202012Validator(SCHEMAS[file_name], registry=schema_registry())


def test_the_inbound_module_loads_neither_faust_nor_kafka_nor_aiohttp() -> None:
    code = (
        "import sys, streams.domain.inbound; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('faust', 'aiokafka', 'aiohttp', 'mode') or m.startswith('streams.kafka')); "
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_schema_types_name_one_file_per_body_shape() -> None:
    assert [entry[0] for entry in SCHEMA_TYPES] == ["envelope.v1.json", "sync-result.v1.json"]
    for _, _, description in SCHEMA_TYPES:
        assert "docs/contract-http.md" in description


@pytest.mark.parametrize("file_name", sorted(SCHEMAS))
def test_every_inbound_schema_is_a_valid_json_schema(file_name: str) -> None:
    Draft202012Validator.check_schema(SCHEMAS[file_name])


@pytest.mark.parametrize("entry", load_expected(), ids=lambda e: e["file"])
def test_every_fixture_matches_its_schema_exactly_when_it_is_valid(entry: dict[str, Any]) -> None:
    raw = (SHARED_FIXTURES / entry["file"]).read_bytes()
    if not entry.get("valid", True):
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return  # not JSON (the oversize fixture is a note): no schema applies
        for file_name in SCHEMAS:
            assert not validator(file_name).is_valid(body), (entry["file"], file_name)
        return
    body = orjson.loads(raw)
    assert validator(SHAPE_SCHEMA[entry["shape"]]).is_valid(body)
    # A bare body is no envelope (the bridge answers 422), and an envelope is refused on a bare
    # route (400).
    other = "bare" if entry["shape"] == "envelope" else "envelope"
    assert not validator(SHAPE_SCHEMA[other]).is_valid(body)


def test_every_example_payload_is_the_shared_fixture_of_the_same_name() -> None:
    # the schema test above covers examples/payloads through the shared fixtures
    for path in sorted((REPO / "examples" / "payloads").glob("[0-9]*.json")):
        assert path.read_bytes() == (SHARED_FIXTURES / path.name).read_bytes(), path.name


def test_unknown_fields_are_allowed_by_types_and_schemas() -> None:
    body = orjson.loads((SHARED_FIXTURES / "07-guestbook-rev-c.json").read_bytes())
    body["newTopLevel"] = {"x": 1}
    body["app"]["labels"] = {"team": "web"}
    body["syncResult"]["resources"][0]["newField"] = [1, 2]
    msgspec.convert(body, Envelope)
    assert validator("envelope.v1.json").is_valid(body)
    assert validator("sync-result.v1.json").is_valid(body["syncResult"])


def test_sync_result_keys_are_the_fields_of_sync_result() -> None:
    assert {
        "resources",
        "revision",
        "revisions",
        "source",
        "sources",
        "managedNamespaceMetadata",
    } == SYNC_RESULT_KEYS


@pytest.mark.parametrize("value", ["guestbook\n", "argocd\n"])
def test_a_trailing_newline_is_no_kubernetes_name(value: str) -> None:
    # Python's `$` matches before a final newline; the patterns must not let one through
    assert name_problem(value) is not None
    assert namespace_problem(value) is not None
    body = {"app": {"name": value}, "operation": {"phase": "Succeeded", "startedAt": "t"}}
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(body, Envelope)
    assert not validator("envelope.v1.json").is_valid(body)


def test_the_name_rules_of_the_types_are_those_of_the_problem_functions() -> None:
    for value in ["guestbook", "a.b-c", "x" * 253, "x" * 254, "A", "a..b", "-a", "a/b", ""]:
        body = {"app": {"name": value}, "operation": {"phase": "S", "startedAt": "t"}}
        assert validator("envelope.v1.json").is_valid(body) == (name_problem(value) is None)
    for value in ["argocd", "x" * 63, "x" * 64, "a.b", "Argo", "", "a-"]:
        body = {
            "app": {"name": "a", "namespace": value},
            "operation": {"phase": "S", "startedAt": "t"},
        }
        # "" is allowed in the envelope: it means the default namespace
        assert validator("envelope.v1.json").is_valid(body) == (
            value == "" or namespace_problem(value) is None
        )


# --- docs/contract-http.md documents the types ---------------------------------------------


def _doc_type(t: mi.Type) -> str:
    """A field's type as the contract page writes it."""
    if isinstance(t, mi.Metadata):
        return _doc_type(t.type)
    if isinstance(t, mi.UnionType):
        return " or ".join(_doc_type(m) for m in t.types if not isinstance(m, mi.NoneType)) + (
            " or null" if any(isinstance(m, mi.NoneType) for m in t.types) else ""
        )
    if isinstance(t, mi.LiteralType):
        return {int: "integer", str: "string"}[type(t.values[0])]
    if isinstance(t, mi.ListType):
        return f"list of {_doc_type(t.item_type)}s"
    return {
        mi.StrType: "string",
        mi.IntType: "integer",
        mi.DictType: "object",
        mi.StructType: "object",
    }[type(t)]


def _rows(t: mi.StructType, prefix: str = "") -> dict[str, tuple[str, bool]]:
    """Field path -> (doc type, required); a required nested object is listed field by field."""
    out: dict[str, tuple[str, bool]] = {}
    for field in t.fields:
        path = prefix + field.encode_name
        if isinstance(field.type, mi.StructType):
            out.update(_rows(field.type, path + "."))
        else:
            out[path] = (_doc_type(field.type), field.required)
    return out


def _doc_table(heading: str) -> list[list[str]]:
    text = (REPO / "docs" / "contract-http.md").read_text()
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_the_envelope_table_of_the_contract_page_is_the_envelope_type() -> None:
    documented: dict[str, tuple[str, bool]] = {}
    for cells in _doc_table("The envelope"):
        required = cells[2] == "**yes**"
        for name in re.findall(r"`([^`]+)`", cells[0]):
            documented[name] = (cells[1], required)
    assert documented == _rows(mi.type_info(Envelope))


def test_the_bare_table_of_the_contract_page_is_the_sync_result_type() -> None:
    info = mi.type_info(SyncResult)
    table = {re.findall(r"`([^`]+)`", cells[0])[0]: cells[1] for cells in _doc_table("The bare")}
    assert set(table) == {f.encode_name for f in info.fields}
    for field in info.fields:
        cell = table[field.encode_name]
        assert not field.required
        if field.encode_name == "resources":
            resource = mi.type_info(SyncResult).fields[0].type.item_type
            assert cell.startswith("list of objects, each with")
            named = set(re.findall(r"`(\w+)`", cell))
            assert named == {f.encode_name for f in resource.fields}
            required_part = cell.split("(strings, required", 1)[0]
            assert set(re.findall(r"`(\w+)`", required_part)) == {
                f.encode_name for f in resource.fields if f.required
            }
        else:
            assert cell == _doc_type(field.type), field.encode_name


# --- observedAt and commit --------------------------------------------------------------------


def test_the_health_examples_are_envelopes_with_observed_at_and_commit() -> None:
    files = sorted((REPO / "examples" / "payloads" / "health").glob("[0-9]*.json"))
    assert len(files) == 2
    for path in files:
        body = orjson.loads(path.read_bytes())
        assert validator("envelope.v1.json").is_valid(body), path.name
        envelope = msgspec.convert(body, Envelope)
        assert isinstance(envelope.observed_at, str) and envelope.commit is not msgspec.UNSET


@pytest.mark.parametrize(
    ("value", "syntax", "calendar"),
    [
        ("2026-07-06T09:13:42Z", True, True),
        ("2026-07-06T09:13:42.123456789+05:30", True, True),
        ("2024-02-29T00:00:00-00:00", True, True),
        ("2025-02-29T00:00:00Z", True, False),
        ("2026-04-31T00:00:00Z", True, False),
        ("2026-07-06T09:13:42", False, False),
        ("2026-07-06 09:13:42Z", False, False),
        ("2026-07-06t09:13:42z", False, False),
        ("2026-07-06T24:00:00Z", False, False),
        ("2026-07-06T09:13:42Z\n", False, False),
        ("2026-07-06", False, False),
    ],
)
def test_a_timestamp_is_checked_for_syntax_by_the_schema_and_calendar_by_the_types(
    value: str, syntax: bool, calendar: bool
) -> None:
    from streams.domain.inbound import timestamp_problem

    body = {"app": {"name": "a"}, "operation": {"phase": "S", "startedAt": "t"}}
    body["observedAt"] = value
    assert validator("envelope.v1.json").is_valid(body) == syntax
    assert (timestamp_problem(value) is None) == calendar
    try:
        msgspec.convert(body, Envelope)
        accepted = True
    except msgspec.ValidationError:
        accepted = False
    assert accepted == calendar
