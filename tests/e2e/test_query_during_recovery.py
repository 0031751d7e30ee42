"""The query API while a restarted worker recovers its ``apps`` table from the changelog.

Recovery applies the changelog in order, a buffer at a time, so until it ends the table holds
each app's state as of some older record. ``GET /apps/...`` must answer 503 until then, never
an older state with 200 (seen as a flaky ``test_exactly_once`` kill test: its restarted worker
answered ``argocd/svc-777`` one deploy behind while still reading the changelog).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.e2e.harness import Worker
from tests.support import produce, wait_for

KEY = "argocd/svc-recovering"
VERSIONS = 40_000  # enough records that the recovery takes a while on either broker


def _state(version: int) -> dict[str, Any]:
    return {"app": "svc-recovering", "app_namespace": "argocd", "revision": f"v{version}"}


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

    async def newest_answered() -> bool:
        try:
            status, body = await worker.get(f"/apps/{KEY}")
        except (aiohttp.ClientError, orjson.JSONDecodeError):
            return False  # not listening yet
        if status == 200:
            answered.append(body["revision"])
        return status == 200 and body["revision"] == newest

    await wait_for(newest_answered, timeout=120, interval=0.01, what="the newest state")
    assert set(answered) == {newest}, f"older states answered: {sorted(set(answered))[:5]}"
