"""Slow and idle clients against the bridge (issue 15 parts 1 and 4): each kind is closed within
its deadline, and past the open-file limit real deliveries still get 202.

The bridge runs as a child process under an open-file limit of 1,024 with short deadlines
(head 2 s, body 3 s, idle 4 s: the defaults are longer, the mechanism the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from pathlib import Path

import aiohttp

from connectors.broker import EmbeddedBroker
from streams.kafka.setup import ensure_topics
from tests.chaos.harness import AUTH, Figures, note
from tests.compose.metrics_text import scrape
from tests.connectors.bridge.helpers import TOKEN, envelope
from tests.connectors.bridge.test_slow_clients import BridgeProcess

PREFIX = "chaos."
HEAD_S, BODY_S, IDLE_S = 2.0, 3.0, 4.0
FD_LIMIT = 1_024


def _kinds() -> dict[str, tuple[list[bytes], float]]:
    """Each kind of slow client: what it trickles (one part every 0.5 s), and its deadline."""
    auth = f"Host: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n".encode()
    line = b"POST /v1/sync HTTP/1.1\r\n"
    json = b"Content-Type: application/json\r\n"
    return {
        "request_line": ([line[i : i + 1] for i in range(len(line))], HEAD_S),
        "headers": ([line, auth, *([b"X-Slow: 1\r\n"] * 30)], HEAD_S),
        "content_length": (
            [line + auth + json + b"Content-Length: 1000\r\n\r\n", *[b"{"] * 30],
            BODY_S,
        ),
        "chunked": (
            [line + auth + json + b"Transfer-Encoding: chunked\r\n\r\n", *[b"1\r\n{\r\n"] * 30],
            BODY_S,
        ),
        "idle": ([], IDLE_S),
    }


async def _one_slow(port: int, parts: list[bytes]) -> tuple[bytes, float]:
    """Open a connection, trickle ``parts``; return what the bridge sent and when it closed."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for part in parts:
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(0.5)  # the slow client itself

    task = asyncio.create_task(trickle())
    try:
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        task.cancel()
        writer.close()
    return answer, time.monotonic() - started


async def slow_clients(
    directory: Path, *, per_kind: int = 50, held: int = 1_100, scenario: str = "slow-clients"
) -> Figures:
    figures = Figures(scenario)
    started = time.monotonic()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < held + 512:  # this process holds the slow clients' sockets
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, (held + 512) * 2), hard))
    broker = EmbeddedBroker(log_path=directory / "broker.log")
    await broker.start()
    await ensure_topics(broker.bootstrap, PREFIX, 8)
    bridge = BridgeProcess(
        {
            "SYNCTRAIL_KAFKA_BOOTSTRAP": broker.bootstrap,
            "SYNCTRAIL_TOPIC_PREFIX": PREFIX,
            "SYNCTRAIL_BRIDGE_TOKENS": TOKEN,
            "SYNCTRAIL_BRIDGE_SPOOL_DIR": str(directory / "spool"),
            "SYNCTRAIL_BRIDGE_HEAD_TIMEOUT_S": str(HEAD_S),
            "SYNCTRAIL_BRIDGE_BODY_TIMEOUT_S": str(BODY_S),
            "SYNCTRAIL_BRIDGE_KEEPALIVE_S": str(IDLE_S),
        },
        directory / "bridge.log",
        FD_LIMIT,
    )
    try:
        await bridge.start()
        note(f"{scenario}: {per_kind} clients of each kind, then {held} held past {FD_LIMIT} fds")
        kinds = _kinds()
        for name, (parts, deadline) in kinds.items():
            results = await asyncio.gather(
                *(_one_slow(bridge.port, parts) for _ in range(per_kind)), return_exceptions=True
            )
            closed = [r for r in results if isinstance(r, tuple)]
            figures.put(f"{name}_closed", len(closed))
            figures.put(f"{name}_408", sum(1 for a, _ in closed if a.startswith(b"HTTP/1.1 408")))
            figures.put(f"{name}_max_close_seconds", max((t for _, t in closed), default=-1.0))
            figures.bound(f"{name}_closed", "==", per_kind)
            figures.bound(f"{name}_max_close_seconds", "<=", deadline + 5)
            if name != "idle":
                figures.bound(f"{name}_408", "==", per_kind)
        # connections that only send part of a request line, past the open-file limit
        writers: list[asyncio.StreamWriter] = []
        try:
            for _ in range(held):
                with contextlib.suppress(ConnectionError, OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
                    writer.write(b"POST /v1/sy")
                    writers.append(writer)
            took = []
            async with aiohttp.ClientSession() as session:

                async def post(seq: int) -> int:
                    begun = time.monotonic()
                    resp = await asyncio.wait_for(
                        session.post(
                            f"{bridge.url}/v1/sync", data=envelope("real", seq), headers=AUTH
                        ),
                        15,
                    )
                    took.append(time.monotonic() - begun)
                    return resp.status

                statuses = [await post(seq) for seq in range(20)]
            figures.put("held_connections", len(writers))
            figures.put("real_posts_202", sum(1 for s in statuses if s == 202))
            figures.put("real_post_max_seconds", max(took))
            samples = await scrape(f"{bridge.url}/metrics")
            closed_total = "synctrail_bridge_connections_closed_total"
            figures.put("shed", samples.value(closed_total, reason="shed") or 0)
            figures.put("open_connections", samples.value("synctrail_bridge_connections") or 0)
        finally:
            for writer in writers:
                writer.close()
    finally:
        bridge.stop()
        broker.stop(timeout_s=0.5)
    figures.put("seconds", time.monotonic() - started)
    figures.bound("real_posts_202", "==", 20)
    figures.bound("real_post_max_seconds", "<=", 15)
    return figures
