"""What the chaos scenarios share: figures with bounds, a paced load, reading sync-events back.

Every process runs on loopback; every wait has a deadline; the load is bounded in requests and
seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from connectors.broker import free_port
from streams.kafka.offsets import read_to_end, topic_partitions
from tests.connectors.bridge.helpers import TOKEN, envelope
from tests.support import Service, wait_for

AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

_OPS: dict[str, Callable[[float, float], bool]] = {
    "==": operator.eq,
    "<=": operator.le,
    ">=": operator.ge,
}


@dataclass
class Figures:
    """The ``CHAOS <scenario> <figure> <value>`` lines of one scenario, and their bounds."""

    scenario: str
    values: dict[str, float | int | str] = field(default_factory=dict)
    bounds: dict[str, tuple[str, float]] = field(default_factory=dict)

    def put(self, figure: str, value: float | int | str) -> None:
        """Record and print one figure."""
        if isinstance(value, float):
            value = round(value, 2)
        self.values[figure] = value
        print(f"CHAOS {self.scenario} {figure} {value}", flush=True)

    def bound(self, figure: str, op: str, limit: float) -> None:
        """``figure`` must satisfy ``op limit`` (``==``, ``<=``, ``>=``)."""
        self.bounds[figure] = (op, limit)

    def broken(self) -> list[str]:
        """The bounds the figures break (a figure never measured breaks its bound)."""
        out = []
        for figure, (op, limit) in self.bounds.items():
            value = self.values.get(figure)
            if not isinstance(value, int | float) or not _OPS[op](value, limit):
                out.append(f"{figure}={value} (bound: {op} {limit})")
        return out


@dataclass
class Answer:
    """One POST to the bridge and what came back."""

    app: str
    seq: int
    sent: float  # time.monotonic()
    answered: float | None = None
    status: int | None = None  # None: no HTTP answer (connection error, timeout)
    delivery_id: str | None = None
    spooled: bool = False
    error: str | None = None


async def paced_load(
    url: str,
    *,
    rate: float,
    seconds: float,
    apps: int = 100,
    request_timeout_s: float = 30.0,
    bare: bool = False,
) -> list[Answer]:
    """``rate`` requests per second for ``seconds``, spread over ``apps`` apps.

    ``bare``: each delivery is a bare syncResult posted to ``/v1/sync/<app>`` (no operation:
    the worker tells a rollback from the revisions alone) instead of an envelope.

    Each app posts its deliveries one after another (the next once the previous is answered,
    and not before its turn), so that each app's deliveries have one order the bridge must
    keep; apps run side by side. When the bridge is slow, an app falls behind its pace and
    catches up afterwards; nothing is sent past ``seconds`` plus one request timeout.
    """
    per_app = rate / apps
    count = max(1, int(seconds * per_app))
    answers: list[Answer] = []
    start = time.monotonic()
    stop_at = start + seconds + request_timeout_s
    timeout = aiohttp.ClientTimeout(total=request_timeout_s)
    connector = aiohttp.TCPConnector(limit=apps)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def one_app(index: int) -> None:
            app = f"app-{index:03d}"
            offset = index / rate  # apps take turns through each second
            for seq in range(count):
                due = start + offset + seq / per_app
                now = time.monotonic()
                if now >= stop_at:
                    return
                if due > now:
                    await asyncio.sleep(due - now)
                answer = Answer(app, seq, time.monotonic())
                answers.append(answer)
                try:
                    async with session.post(
                        f"{url}/v1/sync/{app}" if bare else f"{url}/v1/sync",
                        data=bare_body(app, seq) if bare else envelope(app, seq),
                        headers=AUTH,
                    ) as resp:
                        answer.status = resp.status
                        body = await resp.read()
                    if resp.status == 202:
                        data = orjson.loads(body)
                        answer.delivery_id = data["delivery_id"]
                        answer.spooled = bool(data["spooled"])
                    else:
                        answer.error = body[:200].decode(errors="replace")
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    answer.error = f"{type(exc).__name__}: {exc}"
                else:
                    answer.answered = time.monotonic()

        await asyncio.gather(*(one_app(i) for i in range(apps)))
    return answers


def bare_body(app: str, seq: int) -> bytes:
    """The bare syncResult of :func:`envelope` (revision ``rev-<seq>``)."""
    return orjson.dumps(orjson.loads(envelope(app, seq))["syncResult"])


@dataclass(frozen=True)
class Read:
    """One record read back: where it is, when the broker stamped it, its JSON value."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: Any


async def read_all(bootstrap: str, topic: str, *, timeout_s: float = 60.0) -> list[Read]:
    """Every record of ``topic`` from the beginning to the end offsets of now."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[Read] = []
        async for msgs in read_to_end(consumer, tps, timeout_s=timeout_s):
            out.extend(
                Read(m.partition, m.offset, m.timestamp, m.key, orjson.loads(m.value))
                for m in msgs
                if m.value is not None
            )
        out.sort(key=lambda r: (r.partition, r.offset))
        return out
    finally:
        await consumer.stop()


def delivery_figures(figures: Figures, answers: list[Answer], records: list[Read]) -> None:
    """accepted, arrived, lost, duplicates, order inversions, 5xx, spooled, client errors."""
    accepted = {a.delivery_id for a in answers if a.status == 202 and a.delivery_id}
    on_topic = Counter(r.value["delivery_id"] for r in records)
    per_app: dict[str, list[int]] = defaultdict(list)
    for record in records:  # sorted by partition and offset: an app's records are in order
        value = record.value
        per_app[str(record.key)].append(int(value["revision"].removeprefix("rev-")))
    inversions = 0
    last_not_latest = 0
    for seqs in per_app.values():
        highest = -1
        for seq in seqs:
            if seq < highest:
                inversions += 1
            highest = max(highest, seq)
        if seqs[-1] != highest:
            last_not_latest += 1
    figures.put("requests", len(answers))
    figures.put("accepted", len(accepted))
    figures.put("arrived", len(accepted & on_topic.keys()))
    figures.put("lost", len(accepted - on_topic.keys()))
    figures.put("records", len(records))
    figures.put("duplicates", sum(n - 1 for n in on_topic.values() if n > 1))
    figures.put("order_inversions", inversions)
    figures.put("apps_last_not_latest", last_not_latest)
    figures.put("bridge_5xx", sum(1 for a in answers if a.status is not None and a.status >= 500))
    figures.put("client_errors", sum(1 for a in answers if a.status is None))
    figures.put("spooled", sum(1 for a in answers if a.spooled))
    took = sorted(a.answered - a.sent for a in answers if a.answered is not None)
    if took:
        figures.put("answer_p99_seconds", took[int(len(took) * 0.99) - 1 if len(took) > 1 else 0])
        figures.put("answer_max_seconds", took[-1])


class Bridge(Service):
    """``synctrail bridge`` as a child process on a free port."""

    def __init__(
        self,
        env: dict[str, str],
        directory: Path,
        *,
        port: int | None = None,
        log_name: str = "bridge.log",
    ) -> None:
        self.port = port or free_port()
        super().__init__(
            ["bridge"],
            {
                **env,
                "SYNCTRAIL_BRIDGE_PORT": str(self.port),
                "SYNCTRAIL_BRIDGE_TOKENS": TOKEN,
                "SYNCTRAIL_BRIDGE_SPOOL_DIR": str(directory / "spool"),
            },
            directory / log_name,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fence_skipped(self) -> int:
        """Spooled records the drain found on the topic already and did not send again (each
        one a duplicate without the fence), from the bridge's log."""
        total = 0
        for line in self.log().splitlines():
            if line.startswith("{") and "not sent again" in line:
                total += int(orjson.loads(line).get("records", 0))
        return total

    async def readyz(self) -> dict[str, Any] | None:
        """The bridge's readiness answer, or ``None`` when it does not answer."""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
                session.get(f"{self.url}/readyz") as resp,
            ):
                return dict(orjson.loads(await resp.read()))
        except (aiohttp.ClientError, TimeoutError, OSError, orjson.JSONDecodeError):
            return None

    async def wait_broker_up(self, timeout: float = 60.0) -> None:
        async def up() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"bridge exited early:\n{self.log()[-3000:]}")
            state = await self.readyz()
            return bool(state and state["broker"] == "up")

        await wait_for(up, timeout=timeout, interval=0.1, what="bridge up with Kafka")

    def idempotence(self) -> str:
        """Whether the bridge's producer was idempotent, from its last "kafka reachable" line."""
        value = "unknown"
        for line in self.log().splitlines():
            if line.startswith("{") and '"kafka reachable"' in line:
                value = "on" if orjson.loads(line).get("idempotence") else "off"
        return value


async def full_isr_seconds(
    bootstrap: str, topics: list[str], replicas: int, since: float, timeout: float = 120.0
) -> float:
    """Seconds from ``since`` (monotonic) until every partition of ``topics`` has ``replicas``
    replicas in sync."""

    async def full() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            described = await admin.describe_topics(topics)
        except Exception:  # a node coming back may refuse for a moment
            return False
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
        return all(
            len(p["isr"]) >= replicas for topic in described for p in topic["partitions"]
        ) and len(described) == len(topics)

    await wait_for(full, timeout=timeout, interval=0.2, what="every replica back in sync")
    return max(0.0, time.monotonic() - since)


@contextlib.asynccontextmanager
async def services(*started: Service) -> AsyncIterator[None]:
    """Stop (SIGTERM, then SIGKILL) every service on the way out, whatever happened."""
    try:
        yield
    finally:
        for service in started:
            with contextlib.suppress(Exception):
                service.stop(timeout=15)


def log_tail(service: Service, lines: int = 40) -> str:
    return "\n".join(service.log().splitlines()[-lines:])


def note(text: str) -> None:
    """A progress line on stderr (the CHAOS lines go to stdout)."""
    print(f"chaos: {text}", file=sys.stderr, flush=True)
