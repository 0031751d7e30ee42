"""The agent's flusher: the order of its effects, with a scripted producer.

A scripted producer, not the broker, because these tests must hold an acknowledgement back
while they look at what the flusher did meanwhile; a real broker cannot be told to. The same
order against the real broker, across kills and restarts, is in ``tests/e2e``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from streams.agents import Batch, Flusher
from streams.metrics import WorkerMetrics
from tests.support import wait_for


class Message:
    """Faust's reference counting: committable once the last holder acks."""

    def __init__(self, offset: int) -> None:
        self.partition, self.offset, self.tp = 0, offset, ("sync-events", 0)
        self.refcount = 1  # the agent's stream holds it

    def incref(self) -> None:
        self.refcount += 1

    def ack(self, consumer: Any) -> bool:
        self.refcount -= 1
        if self.refcount == 0:
            consumer.acked.append(self.offset)
            return True
        return False


class Event:
    def __init__(self, offset: int) -> None:
        self.message = Message(offset)


class Apps:
    """The ``apps`` table: what was put, and the changelog records it queued."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.stored: dict[str, dict[str, Any]] = {}
        self._changelog: list[tuple[str, int, bytes, bytes]] = []

    def app_state(self, key: str) -> dict[str, Any] | None:
        return self.stored.get(key)

    def put_app_state(self, key: str, state: dict[str, Any]) -> None:
        self.log.append(f"put {key} v{state['v']}")
        self.stored[key] = state
        self._changelog.append(("apps-changelog", 0, key.encode(), b"{}"))

    def take_changelog(self) -> list[tuple[str, int, bytes, bytes]]:
        taken, self._changelog = self._changelog, []
        return taken

    def changelog_acknowledged(self, last: dict[tuple[str, int], int]) -> None:
        self.log.append("changelog acknowledged")


class Outputs:
    """Hands batches over at once; each acknowledgement is released by the test."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.pending: list[asyncio.Future[dict[tuple[str, int], int]]] = []

    async def place(self, records: list[tuple[str, bytes, bytes, bytes | None]]) -> list[Any]:
        return [(topic, 0, key, value, source) for topic, key, value, source in records]

    async def hand_over(self, records: list[Any]) -> asyncio.Future[Any]:
        self.log.append("hand over " + ",".join(r[3].decode() for r in records))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending.append(fut)
        return fut

    def acknowledge(self, index: int) -> None:
        self.pending[index].set_result({})

    async def send_placed(self, records: list[Any]) -> dict[tuple[str, int], int]:
        self.log.append(f"changelog sent ({len(records)})")
        return {}


@pytest.fixture
async def parts() -> AsyncIterator[SimpleNamespace]:
    """A started flusher over stand-ins that log what happens, in order."""
    log: list[str] = []
    commits: list[list[int]] = []
    consumer = SimpleNamespace(acked=[], commits=commits)

    async def commit() -> bool:  # Faust's Consumer.commit: what is acked so far
        commits.append(list(consumer.acked))
        return True

    consumer.commit = commit
    topology = SimpleNamespace(
        apps=Apps(log),
        app=SimpleNamespace(
            consumer=consumer, sensors=SimpleNamespace(on_message_out=lambda *a: None)
        ),
        metrics=WorkerMetrics(),
    )
    outputs = Outputs(log)
    flusher = Flusher(topology, outputs)  # type: ignore[arg-type]
    flusher.start()
    yield SimpleNamespace(
        log=log, consumer=consumer, apps=topology.apps, outputs=outputs, flusher=flusher
    )
    await flusher.stop()


def batch_of(offset: int, key: str, version: int) -> Batch:
    event = Event(offset)
    batch = Batch(events=[event])
    batch.outputs.append(("deployments", key.encode(), b"deploy-%d" % version, None))
    batch.states[key] = (event, {"v": version})
    batch.outcomes.append(("deployed", None))
    return batch


async def test_a_state_reaches_the_table_only_after_its_outputs_are_acknowledged(parts):
    flusher = parts.flusher
    batch = batch_of(10, "argocd/guestbook", 1)
    await flusher.submit(batch)
    await wait_for(lambda: flusher._queue.empty(), what="the flusher to take it")

    assert parts.log == ["hand over deploy-1"]
    assert parts.apps.stored == {}
    assert flusher.state("argocd/guestbook") == {"v": 1}  # decided: the next batch sees it
    parts.outputs.acknowledge(0)
    await flusher.drain()

    assert parts.log == [
        "hand over deploy-1",
        "put argocd/guestbook v1",
        "changelog sent (1)",
        "changelog acknowledged",
    ]
    assert flusher.pending == {}
    assert parts.apps.stored == {"argocd/guestbook": {"v": 1}}


async def test_offsets_become_committable_only_once_the_state_is_acknowledged(parts):
    flusher = parts.flusher
    batch = batch_of(7, "argocd/guestbook", 1)
    await flusher.submit(batch)
    message = batch.events[0].message
    assert message.ack(parts.consumer) is False  # the agent's take acks after its body
    assert parts.consumer.acked == []

    parts.outputs.acknowledge(0)
    await flusher.drain()
    assert parts.consumer.acked == [7]


async def test_a_written_batch_is_committed_without_waiting_for_the_commit_timer(parts):
    flusher = parts.flusher
    batch = batch_of(7, "argocd/guestbook", 1)
    await flusher.submit(batch)
    batch.events[0].message.ack(parts.consumer)  # the agent's take
    assert parts.consumer.commits == []  # nothing durable yet: nothing asked for

    parts.outputs.acknowledge(0)
    await flusher.drain()
    await wait_for(lambda: parts.consumer.commits == [[7]], what="a commit of offset 7")


async def test_the_next_batch_is_handed_over_while_the_last_awaits_its_acknowledgement(parts):
    flusher = parts.flusher
    await flusher.submit(batch_of(1, "argocd/a", 1))
    await flusher.submit(batch_of(2, "argocd/b", 2))

    assert parts.log == ["hand over deploy-1", "hand over deploy-2"]
    assert parts.apps.stored == {}
    parts.outputs.acknowledge(1)  # the later one first: states still go in batch order
    parts.outputs.acknowledge(0)
    await flusher.drain()
    assert [line for line in parts.log if line.startswith("put")] == [
        "put argocd/a v1",
        "put argocd/b v2",
    ]


async def test_a_key_decided_again_keeps_its_newer_undurable_state(parts):
    flusher = parts.flusher
    await flusher.submit(batch_of(1, "argocd/guestbook", 1))
    await flusher.submit(batch_of(2, "argocd/guestbook", 2))

    parts.outputs.acknowledge(0)
    await wait_for(lambda: "changelog acknowledged" in parts.log, what="the first write")
    assert parts.apps.stored["argocd/guestbook"] == {"v": 1}
    assert flusher.state("argocd/guestbook") == {"v": 2}

    parts.outputs.acknowledge(1)
    await flusher.drain()
    assert parts.apps.stored["argocd/guestbook"] == {"v": 2}
    assert flusher.pending == {}


async def test_submit_waits_while_the_queue_is_full(parts):
    flusher = parts.flusher  # depth 1: one batch written, one waiting
    await flusher.submit(batch_of(1, "argocd/a", 1))
    await wait_for(lambda: flusher._queue.empty(), what="the flusher to take it")
    await flusher.submit(batch_of(2, "argocd/b", 1))
    third = asyncio.create_task(flusher.submit(batch_of(3, "argocd/c", 1)))
    await wait_for(lambda: len(parts.outputs.pending) == 3, what="the third hand-over")

    assert not third.done()
    parts.outputs.acknowledge(0)
    await asyncio.wait_for(third, 5)
    for index in (1, 2):
        parts.outputs.acknowledge(index)
    await flusher.drain()
    assert sorted(parts.apps.stored) == ["argocd/a", "argocd/b", "argocd/c"]
