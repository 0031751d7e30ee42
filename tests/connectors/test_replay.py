"""``synctrail replay``: payload folders in order, envelope vs bare routing, failures."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import orjson

from connectors.broker import EmbeddedBroker, free_port
from connectors.replay import payload_files, plan, replay
from tests.connectors.bridge.helpers import TOKEN, bridge_settings, running_bridge
from tests.support import SHARED_FIXTURES, wait_for_records

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "payloads"


def test_examples_are_the_valid_fixtures_with_an_expected_json_replay_can_use() -> None:
    names = [p.name for p in payload_files([EXAMPLES])]
    shared = sorted(p.name for p in SHARED_FIXTURES.glob("[0-9][0-9]-*.json"))
    assert names == shared
    for name in names:
        assert (EXAMPLES / name).read_bytes() == (SHARED_FIXTURES / name).read_bytes()
    entries = orjson.loads((EXAMPLES / "expected.json").read_bytes())["payloads"]
    assert [e["file"] for e in entries] == names
    assert all(set(e) <= {"file", "app", "shape", "requestPath"} for e in entries)


def test_folder_is_expanded_in_name_order_without_expected_json_or_notes(tmp_path: Path) -> None:
    for name in ("b.json", "a.json", "expected.json", "README.md", "note.txt"):
        (tmp_path / name).write_text("{}")
    assert [p.name for p in payload_files([tmp_path])] == ["a.json", "b.json"]
    assert [p.name for p in payload_files([tmp_path / "note.txt"])] == ["note.txt"]


def test_routes_come_from_the_shape_then_app_then_expected_json(tmp_path: Path) -> None:
    envelope = EXAMPLES / "03-guestbook-rev-b.json"
    bare = EXAMPLES / "02-payments-api-rev-a.json"
    assert plan(envelope, envelope.read_bytes(), "x/y").route == "/v1/sync"
    assert plan(bare, bare.read_bytes(), None).route == "/v1/sync/argocd/payments-api"
    assert plan(bare, bare.read_bytes(), "team/pay").route == "/v1/sync/team/pay"
    lonely = tmp_path / "bare.json"
    shutil.copy(bare, lonely)
    post = plan(lonely, lonely.read_bytes(), None)
    assert post.route is None and "--app" in (post.problem or "")


async def test_replaying_the_examples_publishes_each_once_in_order(
    broker: EmbeddedBroker, topics: str, tmp_path: Path
) -> None:
    out = io.StringIO()
    async with running_bridge(bridge_settings(broker.bootstrap, topics, tmp_path)) as (client, _):
        code = await replay([EXAMPLES], str(client.make_url("/")), TOKEN, out=out)
    lines = out.getvalue().splitlines()
    assert code == 0, lines
    assert len(lines) == 14 and all(": 202 " in line for line in lines)
    assert lines[1].startswith(
        "02-payments-api-rev-a.json -> POST /v1/sync/argocd/payments-api: 202"
    )
    records = await wait_for_records(broker.bootstrap, f"{topics}sync-events", 14)
    entries = orjson.loads((EXAMPLES / "expected.json").read_bytes())["payloads"]
    by_app: dict[str, list[str]] = {}
    for entry in entries:
        by_app.setdefault(entry["app"], []).append(entry["file"])
    for app, files in by_app.items():
        mine = sorted((r for r in records if r.key == app), key=lambda r: r.offset)
        assert [r.value["body_sha256"] for r in mine] == [
            hashlib.sha256((EXAMPLES / f).read_bytes()).hexdigest() for f in files
        ]


async def test_replay_exits_non_zero_when_a_post_fails(
    broker: EmbeddedBroker, topics: str, tmp_path: Path
) -> None:
    bad = SHARED_FIXTURES / "invalid-wrong-types.json"
    good = EXAMPLES / "01-guestbook-rev-a.json"
    out = io.StringIO()
    async with running_bridge(bridge_settings(broker.bootstrap, topics, tmp_path)) as (client, _):
        url = str(client.make_url("/"))
        assert await replay([good, bad], url, TOKEN, out=out) == 1
        assert await replay([good], url, "wrong-token", out=io.StringIO()) == 1
    text = out.getvalue()
    assert "invalid-wrong-types.json -> POST /v1/sync: 400" in text
    assert "1 of 2 payloads failed" in text


async def test_replay_reports_an_unreachable_bridge(tmp_path: Path) -> None:
    out = io.StringIO()
    code = await replay(
        [EXAMPLES / "01-guestbook-rev-a.json"], f"http://127.0.0.1:{free_port()}", TOKEN, out=out
    )
    assert code == 1 and "failed" in out.getvalue()
