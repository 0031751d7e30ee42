"""``GET /dora`` on workers whose ``apps`` table holds DORA histories (docs/dora.md, "The query
API"): an app's figures routed to its owner, a project's gathered from every worker.

The states are written to the table's changelog before the workers start, as a worker of the
group would have left them (``test_query_during_recovery`` does the same), each with a history
built by ``dora.record_deployment``/``dora.record_health``; every answer must equal
``dora.keys`` (or ``dora.combine``) over the same histories.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import DefaultPartitioner

from streams.domain import dora, timestamps
from tests.e2e.harness import Worker
from tests.support import produce, wait_for

PARTITIONS = 8
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
UNTIL = datetime(2026, 11, 20, tzinfo=UTC)


def at(days: float = 0, minutes: float = 0) -> datetime:
    return T0 + timedelta(days=days, minutes=minutes)


def iso(moment: datetime) -> str:
    return timestamps.format_datetime(moment)


def partition_of(key: str) -> int:
    """The partition the bridge (sync-events) and the table (its changelog) put ``key`` on."""
    return int(DefaultPartitioner()(key.encode(), list(range(PARTITIONS)), None))


def history(seed: int) -> dora.History:
    """A week of deployments: a lead time, a failed operation, a Degraded 20 minutes after a
    deploy then Healthy, a rollback; ``seed`` shifts the times and adds deployments."""
    h: dora.History | None = None
    day = seed / 3

    def deploy(id_: str, when: datetime, phase: str = "Succeeded", **more: Any) -> None:
        nonlocal h
        h = dora.record_deployment(
            h, delivery_id=f"{seed}-{id_}", finished_at=when, phase=phase, revision=id_, **more
        )

    deploy("a", at(day), commits={"a": at(day, -90 - seed)})
    deploy("b", at(day + 1), phase="Failed")
    deploy("c", at(day + 1, 40), commits={"c": at(day + 1, -30)})
    h = dora.record_health(h, "Degraded", at(day + 1, 60))  # 20 min after c: in 1 h, not 10 min
    h = dora.record_health(h, "Healthy", at(day + 1, 100 + seed))
    for extra in range(seed):
        deploy(f"x{extra}", at(day + 2, 60 * extra), commits={f"x{extra}": at(day + 2, -5)})
    deploy("d", at(day + 4))
    deploy("e", at(day + 4, 30), rollback=True)
    assert h is not None
    return h


def state(key: str, project: str, dora_history: dora.History | None) -> dict[str, Any]:
    namespace, name = key.split("/")
    found: dict[str, Any] = {
        "app": name,
        "app_namespace": namespace,
        "project": project,
        "partition": partition_of(key),
        "revision": "e",
    }
    if dora_history is not None:
        found["dora"] = dora_history
    return found


async def seed_table(bootstrap: str, worker_env: dict[str, str], states: dict[str, Any]) -> None:
    """Write ``states`` to the apps table's changelog, as a worker of the group left them."""
    changelog = f"{worker_env['SYNCTRAIL_WORKER_ID']}-apps-changelog"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(changelog, PARTITIONS, 1)])
    finally:
        await admin.close()
    records = [(key.encode(), orjson.dumps(value)) for key, value in states.items()]
    await produce(bootstrap, changelog, records)


def expected(
    histories: list[dora.History],
    since: datetime | None = None,
    until: datetime = UNTIL,
    window_s: float = 3600.0,
) -> dict[str, Any]:
    return dora.keys(histories, since, until, now=until, failure_window_s=window_s).as_json()


async def test_an_apps_figures_are_the_keys_of_its_history_over_the_range_asked(
    broker, worker_env: dict[str, str], start_worker: Callable[..., Worker]
) -> None:
    cart = history(0)
    await seed_table(
        broker.bootstrap,
        worker_env,
        {
            "argocd/cart": state("argocd/cart", "shop", cart),
            "argocd/idle": state("argocd/idle", "quiet", None),
        },
    )
    worker = start_worker(SYNCTRAIL_DORA_FAILURE_WINDOW="600")
    await worker.wait_ready(timeout=120)

    status, body = await worker.get("/dora", app="argocd/cart", until=iso(UNTIL))
    assert status == 200, body
    assert body == {"app": "argocd/cart", **expected([cart], window_s=600.0)}
    # the window is the setting's: with the default hour, c's Degraded (20 min after it) and
    # the rollback 30 min after d fail them too
    assert (body["failed_deployments"], expected([cart])["failed_deployments"]) == (1, 3)

    since, until = at(1), at(3)
    status, ranged = await worker.get(
        "/dora", app="argocd/cart", since=iso(since), until=iso(until)
    )
    assert status == 200, ranged
    assert ranged == {"app": "argocd/cart", **expected([cart], since, until, window_s=600.0)}
    assert 0 < ranged["deployments"] < body["deployments"]

    asked = datetime.now(UTC)
    status, now = await worker.get("/dora", app="cart")  # until: now; the default namespace
    assert status == 200 and now["app"] == "argocd/cart"
    assert asked - timedelta(seconds=1) <= timestamps.parse(now["until"]) <= datetime.now(UTC)
    assert now["since"] is None and now["deployments"] == body["deployments"]


async def test_an_app_or_project_without_deployments_is_404_and_a_bad_query_400(
    broker, worker_env: dict[str, str], start_worker: Callable[..., Worker]
) -> None:
    await seed_table(
        broker.bootstrap,
        worker_env,
        {
            "argocd/cart": state("argocd/cart", "shop", history(0)),
            "argocd/idle": state("argocd/idle", "quiet", None),
        },
    )
    worker = start_worker()
    await worker.wait_ready(timeout=120)

    for params, message in [
        ({"app": "argocd/idle"}, "no deployment recorded for app 'argocd/idle'"),
        ({"app": "argocd/ghost"}, "no deployment recorded for app 'argocd/ghost'"),
        ({"project": "quiet"}, "no deployment recorded for any app of project 'quiet'"),
        ({"project": "nope"}, "no deployment recorded for any app of project 'nope'"),
    ]:
        status, body = await worker.get("/dora", **params)
        assert (status, body["error"]) == (404, message), params

    for params, message in [
        ({}, "give exactly one of app=<namespace>/<name> or project=<project>"),
        ({"app": "argocd/cart", "project": "shop"}, "give exactly one of app="),
        ({"app": "a/b/c"}, "app='a/b/c' is not <namespace>/<name>"),
        ({"project": "shop", "since": "last week"}, "since='last week' is not an RFC 3339 time"),
        (
            {"app": "argocd/cart", "since": iso(UNTIL), "until": iso(UNTIL)},
            "since (2026-11-20T00:00:00.000Z) must be before until (2026-11-20T00:00:00.000Z)",
        ),
    ]:
        status, body = await worker.get("/dora", **params)
        assert status == 400 and body["error"].startswith(message), (params, body)

    status, body = await worker.get("/dora", project="shop", until=iso(UNTIL))
    assert status == 200 and body == {"project": "shop", **expected([history(0)])}


def one_app_per_partition() -> dict[str, int]:
    """An app key on each partition: ``{key: seed}``."""
    found: dict[int, str] = {}
    candidate = 0
    while len(found) < PARTITIONS:
        key = f"argocd/svc-{candidate}"
        found.setdefault(partition_of(key), key)
        candidate += 1
    return {key: seed for seed, key in enumerate(sorted(found.values()))}


async def local_part(worker: Worker, **params: str) -> dict[str, Any] | None:
    try:
        status, body = await worker.get("/dora/local", project="shop", **params)
    except (aiohttp.ClientError, orjson.JSONDecodeError):
        return None
    return body["partial"] if status == 200 else None


async def test_a_project_gathers_every_workers_apps_and_says_which_worker_did_not_answer(
    broker, worker_env: dict[str, str], start_worker: Callable[..., Worker]
) -> None:
    apps = one_app_per_partition()
    histories = {key: history(seed) for key, seed in apps.items()}
    states = {key: state(key, "shop", histories[key]) for key in apps}
    states["argocd/other"] = state("argocd/other", "elsewhere", history(9))
    await seed_table(broker.bootstrap, worker_env, states)
    first = start_worker()
    await first.wait_ready(timeout=120)
    second = start_worker()
    await second.wait_ready(timeout=120)

    async def split() -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Both workers' parts once each holds some of the apps and together all of them."""
        mine, theirs = [await local_part(w, until=iso(UNTIL)) for w in (first, second)]
        if mine is None or theirs is None or not (mine["apps"] and theirs["apps"]):
            return None  # a rebalance under way, or not every partition assigned yet
        return (mine, theirs) if mine["apps"] + theirs["apps"] == len(apps) else None

    mine, theirs = await wait_for(split, timeout=120, interval=0.5, what="the partitions split")
    everything = expected(list(histories.values()))
    assert dora.combine([mine, theirs], until=UNTIL, now=UNTIL).as_json() == everything

    for worker in (first, second):
        status, body = await worker.get("/dora", project="shop", until=iso(UNTIL))
        assert status == 200, body
        assert body == {"project": "shop", **everything}
    for key, one in histories.items():  # half of them live on the other worker: routed there
        status, body = await first.get("/dora", app=key, until=iso(UNTIL))
        assert (status, body) == (200, {"app": key, **expected([one])})

    assert second.process is not None
    os.kill(second.process.pid, signal.SIGSTOP)  # up, but answering nothing: a hung peer
    status, body = await first.get("/dora", project="shop", until=iso(UNTIL))
    assert status == 206, body
    assert body["incomplete"] == [second.url]
    assert {k: v for k, v in body.items() if k != "incomplete"} == {
        "project": "shop",
        **dora.combine([mine], until=UNTIL, now=UNTIL).as_json(),
    }
