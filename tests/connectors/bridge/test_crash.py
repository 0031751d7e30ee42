"""The bridge as a child process: SIGKILL with a full spool, restarts, SIGTERM, refusing to start,
its event loop."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import aiohttp
import pytest

from connectors.bridge.spool import Spool
from connectors.broker import EmbeddedBroker, free_port
from tests.connectors.bridge.helpers import AUTH, TOKEN, envelope, seq_of
from tests.support import Service, read_topic, wait_for, wait_for_log_record

PREFIX = "crash."
TOPIC = f"{PREFIX}sync-events"


def _env(bootstrap: str, port: int, spool: Path) -> dict[str, str]:
    return {
        "SYNCTRAIL_KAFKA_BOOTSTRAP": bootstrap,
        "SYNCTRAIL_TOPIC_PREFIX": PREFIX,
        "SYNCTRAIL_BRIDGE_PORT": str(port),
        "SYNCTRAIL_BRIDGE_TOKENS": TOKEN,
        "SYNCTRAIL_BRIDGE_SPOOL_DIR": str(spool),
        "SYNCTRAIL_BRIDGE_PRODUCE_TIMEOUT_S": "2",
        "SYNCTRAIL_BRIDGE_PROBE_AFTER_S": "0.1",
        "SYNCTRAIL_BRIDGE_DRAIN_INTERVAL_S": "0.2",
        "SYNCTRAIL_LOG_LEVEL": "INFO",
    }


async def _readyz(session: aiohttp.ClientSession, url: str) -> dict | None:
    try:
        async with session.get(f"{url}/readyz") as resp:
            return await resp.json() if resp.status == 200 else None
    except aiohttp.ClientError:
        return None


async def test_spooled_deliveries_survive_sigkill_and_a_new_broker_exactly_once_in_order(
    tmp_path: Path,
) -> None:
    spool_dir = tmp_path / "spool"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = EmbeddedBroker()
    await first.start()
    second = EmbeddedBroker(port=first.port)
    env = _env(first.bootstrap, port, spool_dir)
    bridge = Service(["bridge"], env, tmp_path / "bridge-1.log").start()
    restarted: Service | None = None
    try:
        async with aiohttp.ClientSession() as session:

            async def broker_up() -> bool:
                state = await _readyz(session, url)
                return bool(state and state["broker"] == "up")

            await wait_for(broker_up, timeout=30, what="bridge ready with kafka up")
            async with session.post(
                f"{url}/v1/sync", data=envelope("before", 0), headers=AUTH
            ) as resp:
                assert resp.status == 202 and not (await resp.json())["spooled"]

            first.stop(timeout_s=0.1)
            answers: dict[str, list[dict]] = defaultdict(list)

            async def one_app(app: str) -> None:
                for seq in range(6):
                    async with session.post(
                        f"{url}/v1/sync", data=envelope(app, seq), headers=AUTH
                    ) as resp:
                        assert resp.status == 202, await resp.text()
                        answers[app].append(await resp.json())

            await asyncio.gather(*(one_app(f"app-{a}") for a in range(4)))
            spooled = {a["delivery_id"] for app in answers.values() for a in app if a["spooled"]}
            assert len(spooled) >= 20  # at most the first of each app was in flight at the cut

            bridge.kill()
            left = Spool(spool_dir, 1 << 30)
            left.open()
            assert left.records == len(spooled)
            left.close()

            await second.start()  # empty: the restarted bridge must re-create its topic
            restarted = Service(
                ["bridge"],
                {**env, "SYNCTRAIL_KAFKA_BOOTSTRAP": second.bootstrap},
                tmp_path / "bridge-2.log",
            ).start()

            async def drained() -> bool:
                state = await _readyz(session, url)
                return bool(state and state["broker"] == "up" and state["spool"]["records"] == 0)

            await wait_for(drained, timeout=60, what="restarted bridge drained its spool")
        records = await read_topic(second.bootstrap, TOPIC)
        ids = [r.value["delivery_id"] for r in records]
        assert len(ids) == len(set(ids)) and set(ids) == spooled  # each exactly once
        per_app: dict[str, list[int]] = defaultdict(list)
        for r in sorted(records, key=lambda r: (r.partition, r.offset)):
            per_app[r.key].append(seq_of(r.value))
        for seqs in per_app.values():
            assert seqs == sorted(seqs) and seqs[-1] == 5
        assert list(spool_dir.glob("*.seg")) == []

        assert restarted.stop() == 0  # SIGTERM: graceful
        log = restarted.log()
        assert "bridge stopped" in log and "spool drained" in log
        assert TOKEN not in log + bridge.log()
    finally:
        bridge.kill()
        if restarted is not None:
            restarted.kill()
        first.stop(timeout_s=0.5)
        second.stop(timeout_s=0.5)


async def test_bridge_without_credentials_refuses_to_start(tmp_path: Path) -> None:
    env = _env("127.0.0.1:1", free_port(), tmp_path / "spool")
    env["SYNCTRAIL_BRIDGE_TOKENS"] = ""
    service = Service(["bridge"], env, tmp_path / "bridge.log").start()
    assert service.process is not None
    code = await asyncio.to_thread(service.process.wait, 30)
    assert code == 2
    assert "SYNCTRAIL_BRIDGE_ALLOW_ANONYMOUS" in service.log()


@pytest.mark.parametrize("loop_name", ["uvloop", "asyncio"])
async def test_bridge_serves_on_the_configured_event_loop(tmp_path: Path, loop_name: str) -> None:
    # No broker: the bridge still starts (deliveries would be spooled), which is all this needs.
    env = _env("127.0.0.1:1", free_port(), tmp_path / "spool")
    env["SYNCTRAIL_BRIDGE_EVENT_LOOP"] = loop_name
    service = Service(["bridge"], env, tmp_path / "bridge.log").start()
    try:
        listening = await wait_for_log_record(service, "bridge listening")
        assert listening["event_loop"] == loop_name
        assert service.stop() == 0
    finally:
        service.kill()
