"""The query API while a restarted worker recovers its ``apps`` table from the changelog.

Recovery applies the changelog in order, a buffer at a time, so until it ends the table holds
each app's state as of some older record. ``GET /apps/...`` and ``GET /dora`` must answer 503
until then, never an older state with 200 or 404 (seen as a flaky ``test_exactly_once`` kill
test: its restarted worker answered ``argocd/svc-777`` one deploy behind while still reading
the changelog).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.domain import dora
from tests.e2e.harness import Worker
from tests.support import produce, wait_for

KEY = "argocd/svc-recovering"
VERSIONS = 40_000  # enough records that the recovery takes a while on either broker


#: only the newest state has a DORA history: an older one answered by /dora would be a 404
HISTORY = dora.record_deployment(
    None,
    delivery_id="d1",
    finished_at=datetime(2026, 11, 2, tzinfo=UTC),
    phase="Succeeded",
    revision=f"v{VERSIONS - 1}",
)


def _state(version: int) -> dict[str, Any]:
    state = {"app": "svc-recovering", "app_namespace": "argocd", "revision": f"v{version}"}
    return state | {"dora": HISTORY} if version == VERSIONS - 1 else state


async def test_the_query_api_answers_no_older_state_while_the_table_recovers(
    broker, worker_env: dict[str, str], start_worker: Callable[..., Worker]
) -> None:
    # the changelog a worker of this group left: one app written VERSIONS times
    changelog = f"{worker_env['SYNCTRAIL_WORKER_ID']}-apps-changelog"
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(changelog, 8, 1)])
    finally:
        await admin.close()
    records = [(KEY.encode(), orjson.dumps(_state(v))) for v in range(VERSIONS)]
    await produce(broker.bootstrap, changelog, records, batched=True)
    newest = _state(VERSIONS - 1)["revision"]

    worker = start_worker()
    answered: list[str] = []
    dora_statuses: set[int] = set()

    async def newest_answered() -> bool:
        try:
            status, body = await worker.get(f"/apps/{KEY}")
            dora_status, _ = await worker.get("/dora", app=KEY)
        except (aiohttp.ClientError, orjson.JSONDecodeError):
            return False  # not listening yet
        if status == 200:
            answered.append(body["revision"])
        dora_statuses.add(dora_status)
        return status == 200 and body["revision"] == newest and dora_status == 200

    await wait_for(newest_answered, timeout=120, interval=0.01, what="the newest state")
    assert set(answered) == {newest}, f"older states answered: {sorted(set(answered))[:5]}"
    assert dora_statuses <= {200, 503}, "/dora answered from an older state"
