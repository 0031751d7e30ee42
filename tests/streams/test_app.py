"""The apps table: state held as serialized bytes, decoded on access."""

from __future__ import annotations

import gc
import socket
from pathlib import Path

import orjson
import pytest
from faust.types import TP

from streams.app import decoded_states
from streams.faust_fixes import as_current_event
from streams.settings import WorkerSettings
from streams.topology import build


def _topology(tmp_path: Path):
    return build(
        WorkerSettings(worker_id="table-test", topic_prefix="table.", worker_data_dir=tmp_path)
    )


def test_app_state_is_held_as_bytes_the_garbage_collector_never_scans(tmp_path):
    apps = _topology(tmp_path).apps
    state = {"partition": 3, "images": ["docker.io/library/nginx:1.25"], "history": [{"r": "a"}]}
    # what recovery stores: the changelog's bytes as they are (raw value serializer)
    apps.data["argocd/web"] = apps._to_value(orjson.dumps(state))

    held = apps.data["argocd/web"]
    assert isinstance(held, bytes)
    assert not gc.is_tracked(held)
    assert apps.app_state("argocd/web") == state
    assert apps.app_state("argocd/none") is None


def test_app_states_prefilter_only_skips_states_without_the_bytes(tmp_path):
    apps = _topology(tmp_path).apps
    states = {
        "argocd/a": {"partition": 1, "images": ["docker.io/library/nginx:1.25"]},
        "argocd/b": {"partition": 12, "images": ["docker.io/library/redis:7"]},
        "argocd/c": {"partition": 2, "images": ["docker.io/library/nginx:1.25"]},
    }
    for key, state in states.items():
        apps.data[key] = orjson.dumps(state)
    apps.data["argocd/broken"] = b"not json"

    assert dict(apps.app_states()) == states  # undecodable values are skipped, not raised
    nginx = dict(apps.app_states(containing=orjson.dumps("docker.io/library/nginx:1.25")))
    assert sorted(nginx) == ["argocd/a", "argocd/c"]
    # a pre-filter: "partition":1 also matches 12; callers check the decoded value
    assert sorted(dict(apps.app_states(containing=b'"partition":1'))) == ["argocd/a", "argocd/b"]


def test_raw_states_are_a_snapshot_of_the_bytes_to_decode_elsewhere(tmp_path):
    apps = _topology(tmp_path).apps
    shop, other = {"project": "shop", "partition": 1}, {"project": "shopping", "partition": 2}
    apps.data["argocd/a"] = orjson.dumps(shop)
    apps.data["argocd/b"] = orjson.dumps(other)
    apps.data["argocd/broken"] = b'{"project":"shop"'

    raws = apps.raw_states(b'"project":"shop"')
    apps.data["argocd/c"] = orjson.dumps(shop)  # a write after the snapshot is not in it
    assert sorted(raws) == sorted([orjson.dumps(shop), b'{"project":"shop"'])
    assert list(decoded_states(raws)) == [shop]  # undecodable values are skipped, not raised


class _Message:
    def __init__(self, topic: str, partition: int) -> None:
        self.topic, self.partition = topic, partition


class _Event:
    def __init__(self, topic: str, partition: int) -> None:
        self.message = _Message(topic, partition)


def test_state_writes_are_queued_for_the_agents_producer_on_the_events_partition(tmp_path):
    topology = _topology(tmp_path)
    apps = topology.apps
    source = topology.sync_events.get_topic_name()
    apps._verified_source_topics_for_partitions.add(source)  # Faust asks the consumer otherwise
    event = _Event(source, partition=6)
    with as_current_event(event):
        apps.put_app_state("argocd/web", {"revision": "abc"})
        apps.put_app_state("argocd/api", {"revision": "def"})

    changelog = apps.changelog_topic.get_topic_name()
    assert apps.take_changelog() == [
        (changelog, 6, b"argocd/web", b'{"revision":"abc"}'),
        (changelog, 6, b"argocd/api", b'{"revision":"def"}'),
    ]
    assert apps.take_changelog() == []  # taken once
    assert apps.app_state("argocd/api") == {"revision": "def"}  # and readable at once

    persisted: list[tuple[TP, int]] = []
    apps.data.set_persisted_offset = lambda tp, offset: persisted.append((tp, offset))
    apps.changelog_acknowledged({(changelog, 6): 41})
    assert persisted == [(TP(changelog, 6), 41)]


def test_peers_reach_a_worker_at_its_advertised_host(tmp_path):
    def canonical(**settings) -> str:
        topology = build(
            WorkerSettings(
                worker_id="advertise-test",
                worker_data_dir=tmp_path,
                worker_web_port=6066,
                **settings,
            )
        )
        return str(topology.app.conf.canonical_url)

    # Kubernetes: the pod's DNS name under the headless Service, not the bare pod name
    pod = canonical(worker_web_host="0.0.0.0", worker_advertised_host="w-0.synctrail-worker")
    assert pod == "http://w-0.synctrail-worker:6066"
    assert canonical(worker_web_host="0.0.0.0") == f"http://{socket.gethostname()}:6066"
    assert canonical(worker_web_host="10.1.2.3") == "http://10.1.2.3:6066"


def test_state_is_written_inside_an_event_and_never_deleted(tmp_path):
    topology = _topology(tmp_path)
    apps = topology.apps
    apps._verified_source_topics_for_partitions.add(topology.sync_events.get_topic_name())
    with pytest.raises(TypeError, match="outside of stream iteration"):
        apps.put_app_state("argocd/web", {"revision": "abc"})  # which partition?
    with as_current_event(_Event(topology.sync_events.get_topic_name(), partition=2)):
        apps.put_app_state("argocd/web", {"revision": "abc"})
        with pytest.raises(RuntimeError, match="serialized state"):
            del apps["argocd/web"]
    assert apps.app_state("argocd/web") == {"revision": "abc"}
    assert [record[1:3] for record in apps.take_changelog()] == [(2, b"argocd/web")]


def test_the_decisions_take_the_dora_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNCTRAIL_DORA_FAILURE_WINDOW", "900")
    monkeypatch.setenv("SYNCTRAIL_DORA_HISTORY", "12")
    ctx = _topology(tmp_path).decide_context
    assert (ctx.dora_failure_window_s, ctx.dora_history) == (900.0, 12)
    monkeypatch.setenv("SYNCTRAIL_DORA_HISTORY", "1")  # a folded deployment needs its successor
    with pytest.raises(ValueError, match="dora_history"):
        WorkerSettings()
