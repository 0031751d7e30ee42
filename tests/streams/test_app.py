"""The apps table: state held as serialized bytes, decoded on access."""

from __future__ import annotations

import gc
from pathlib import Path

import orjson

from streams.app import build
from streams.settings import WorkerSettings


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
