"""Stream benchmark: the real worker against a raw aiokafka passthrough, same broker, same run.

``python -m bench.stream`` (``make bench``) starts each broker in turn (``--broker``: the embedded
one and Apache Kafka, see ``bench.brokers``) and runs on it, in order:

1. **Raw baseline** (``raw_events_per_s``): N sync-event records (built from
   ``examples/payloads/03-guestbook-rev-b.json``, 2,598-byte body, ~2.7 KB record) are produced
   to a topic of their own; then a child process consumes them (aiokafka, up to 500 per fetch),
   parses each with orjson and produces it to an output topic, awaiting the acks (``acks=all``)
   once per fetched batch, with aiokafka's default 16384-byte producer batches. It runs twice,
   measured the second time only: the first warms the broker up (a fresh JVM compiles as it
   goes), as the preload does before the worker's timed round. ``raw_cpu_us_per_event`` and
   ``raw_broker_cpu_us_per_event`` are the CPU time the passthrough and the broker used.
2. **Preload**: a ``synctrail worker`` child (default settings) processes the first deploy of each of A apps (10,000); its RSS is read from
   ``/proc/<pid>/status`` (``worker_rss_preload_mb``). It is then stopped (SIGTERM).
3. **Recovery and throughput** (``recovery_s``, ``stream_events_per_s``): N more deploys (two
   per app; each a real deploy: new revision, new image tag, later ``startedAt``) are produced
   while no worker runs. A new worker is started; ``recovery_s`` is the time from its process
   start to the timestamp of the first deployment record it writes (interpreter start, group
   join, rebuilding A apps of state from the changelog, first batch); ``stream_ready_s`` is
   process start to ``/readyz`` 200. Throughput comes from the deployment records' timestamps
   (set by the worker's producer as it sends them): the middle 80 % of the records divided by
   the time they span, so start-up and the last partial batch do not count. The same is done
   for the raw baseline's output records. Meanwhile this process only polls the worker's
   ``/metrics`` (never the broker: the embedded broker's fetch cost grows with the partition,
   so polling it would slow the system under test), so worker and broker share the 2 cores
   as the passthrough and broker did. ``stream_cpu_us_per_event`` and
   ``stream_broker_cpu_us_per_event`` are the CPU time each used per deployment.
4. **End-to-end latency** (``e2e_p50_ms``, ``e2e_p99_ms``): a ``synctrail bridge`` child (token
   auth) in front of that worker (10,000 apps of state); an open-loop asyncio aiohttp client
   POSTs a further deploy of distinct apps at a steady R/s (200) for S seconds (20). Latency of
   a delivery = the timestamp of the deployment record carrying its delivery id (the worker's
   producer stamps it when it sends the record; acknowledged a few ms later) minus the wall
   time at which the client received the bridge's 202 (sent once Kafka has the sync event).
   Records are read after the run, not by a live consumer, for the reason given in 3. Client,
   bridge, worker and broker share the 2 cores; the client does not collect garbage during the
   run (``bench.loadgen``).

**Processing guarantee** (``--processing-guarantee at_least_once|exactly_once|both``, default
``at_least_once``): the workers get ``SYNCTRAIL_PROCESSING_GUARANTEE``, and every phase above
runs once per guarantee, each on topics of its own. ``exactly_once`` runs on Apache Kafka only
(the embedded broker has no transactions); there the raw baseline is transactional too: a
transactional producer commits each fetched batch's outputs with the batch's input offsets
(``send_offsets_to_transaction``), and the passthrough and this process read
``read_committed``. The e2e latency is still taken from the records' timestamps, i.e. when the
worker's producer sent them, not when their transaction committed (which a ``read_committed``
reader waits for).

``*_lost_events`` counts events that reached sync-events but never produced a deployment
record (it must be 0); the waits end once the worker reports no lag and has been quiet for
6 s, so a loss is reported rather than hanging the run. The timed round's records are read
from the deployments written before it ended (``TopicReader.written_ends``: under
exactly-once, the last stable offset may still stand before the stopped preload worker's last
transactions), and counted by delivery id: ``stream_lost_events`` (deliveries of the round
without a deployment record), ``stream_duplicate_deployments`` (records of a delivery already
announced, in the round or before it) and ``stream_outside_round_deployments`` (records of
deliveries that are not the round's, e.g. a preload event announced again); all must be 0.

Output: one ``BENCH <name> <value> <unit>`` line per figure, named ``<broker>.<figure>``
(``BENCH kafka.stream_events_per_s``), and ``<broker>.exactly_once.<figure>`` for the
exactly-once runs; ``stream_ratio`` is ``stream_events_per_s`` over ``raw_events_per_s`` of the
same name prefix: same broker, same guarantee, same run. Progress goes to stderr.
``--profile DIR`` samples the draining workers with py-spy (collapsed stacks); ``--keep``
keeps the child processes' logs.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench import brokers
from bench.loadgen import cpu_seconds, no_collector_pauses
from connectors.broker import free_port
from streams.kafka.offsets import log_end_offsets, read_to_end
from streams.kafka.setup import ensure_topics
from streams.kafka.topics import DEPLOYMENTS, SYNC_EVENTS, TopicSpec

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "examples" / "payloads" / "03-guestbook-rev-b.json"
TOKEN = "bench-token"
PARTITIONS = 8
TEMPLATE_APP = "guestbook"  # 9 characters, like the generated "app-00042": same body size
TEMPLATE_REVISION = "00c875f3417734f356f3fdfad5949f6c01267c67"
TEMPLATE_UID = "5c6f0708-b0c4-55f1-ac55-27dee1919c87"
TEMPLATE_TAG = "v1.5.0"
TEMPLATE_STARTED = datetime(2026, 7, 7, 14, 2, 11, tzinfo=UTC)
TEMPLATE_FINISHED = datetime(2026, 7, 7, 14, 3, 5, tzinfo=UTC)
RAW_IN = TopicSpec("bench-raw-in", "raw", "raw passthrough input")
RAW_OUT = TopicSpec("bench-raw-out", "raw", "raw passthrough output")
RAW_WARM_UP = TopicSpec("bench-raw-warm-up", "raw", "raw passthrough output, not measured")
GUARANTEES = ("at_least_once", "exactly_once")


def say(message: str) -> None:
    """Progress on stderr, so that stdout carries only BENCH lines."""
    print(f"[bench.stream {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- payloads ---------------------------------------------------------------------------------


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def envelope_body(template: str, app: int, deploy: int) -> bytes:
    """The fixture envelope for app ``app-<app>``'s deploy number ``deploy``.

    Every deploy is a real one for the worker: a new revision, a new image tag and a later
    ``startedAt`` than the deploy before it.
    """
    name = f"app-{app:05d}"
    revision = hashlib.sha1(f"{name}/{deploy}".encode()).hexdigest()
    shift = timedelta(hours=deploy)
    text = (
        template.replace(TEMPLATE_REVISION, revision)
        .replace(TEMPLATE_REVISION[:7], revision[:7])
        .replace(TEMPLATE_APP, name)
        .replace(TEMPLATE_UID, str(uuid.uuid5(uuid.NAMESPACE_URL, name)))
        .replace(TEMPLATE_TAG, f"v1.{deploy}.0")
        .replace(_stamp(TEMPLATE_STARTED), _stamp(TEMPLATE_STARTED + shift))
        .replace(_stamp(TEMPLATE_FINISHED), _stamp(TEMPLATE_FINISHED + shift))
    )
    return text.encode()


def sync_events(template: str, apps: Iterable[int], deploy: int) -> list[tuple[bytes, bytes]]:
    """(key, value) sync-event records for ``deploy`` of ``apps``, built as the bridge builds them."""
    from connectors.bridge.events import envelope_event, event_key
    from streams.domain import timestamps

    out = []
    for app in apps:
        raw = envelope_body(template, app, deploy)
        event = envelope_event(
            orjson.loads(raw),
            raw,
            default_namespace="argocd",
            delivery_id=f"bench-{deploy}-{app}",
            received_at=timestamps.now(),
        )
        out.append((event_key(event).encode(), orjson.dumps(event)))
    return out


# --- Kafka helpers ----------------------------------------------------------------------------


async def produce_all(bootstrap: str, topic: str, items: list[tuple[bytes, bytes]]) -> None:
    """Produce every (key, value), awaiting the acks in chunks (fast, and nothing is lost)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for start in range(0, len(items), 2000):
            futures = [
                await producer.send(topic, value, key=key)
                for key, value in items[start : start + 2000]
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


@dataclass
class Read:
    """Records read from a topic: timestamps (ms, from the record) and values."""

    timestamps: list[int] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)


class TopicReader:
    """End offsets and reads of one topic, without a consumer group."""

    def __init__(self, bootstrap: str, topic: str, committed: bool = False) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.committed = committed
        self.tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            isolation_level="read_committed" if committed else "read_uncommitted",
        )

    async def __aenter__(self) -> TopicReader:
        await self.consumer.start()
        self.consumer.assign(self.tps)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def ends(self) -> dict[TopicPartition, int]:
        """The true end offset of every partition (see ``streams.kafka.offsets``)."""
        return await log_end_offsets(self.consumer, self.tps)

    async def written_ends(self) -> dict[TopicPartition, int]:
        """The offset after every record written so far, in a transaction committed or not:
        where the records written from now on start.

        Not :meth:`ends` when reading ``read_committed``: a transaction's records become
        visible only once the broker has written its commit markers, which it does after the
        producer's commit returned (seen 1.5-2.5 s later on Apache Kafka for the first
        transactions of a worker just stopped); the last stable offset then still stands
        before records written earlier, and a round read from it finds them.
        """
        if not self.committed:
            return await self.ends()
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign(self.tps)
            return await log_end_offsets(consumer, self.tps)
        finally:
            await consumer.stop()

    async def read(self, start: dict[TopicPartition, int], end: dict[TopicPartition, int]) -> Read:
        """Every record between ``start`` and ``end``.

        A partition is done once the consumer's position reaches ``end``: with transactions
        the last offsets are commit markers, which the consumer skips without returning them.
        """
        out = Read()
        for tp in self.tps:
            self.consumer.seek(tp, start[tp])
        async for messages in read_to_end(self.consumer, self.tps, ends=end):
            for m in messages:
                out.timestamps.append(m.timestamp)
                out.values.append(m.value)
                out.partitions.append(m.partition)
                out.offsets.append(m.offset)
        return out

    async def read_new(
        self, start: dict[TopicPartition, int], count: int, settle_s: float = 10.0
    ) -> Read:
        """The records after ``start``, once there are ``count`` of them (or ``settle_s`` passed).

        A worker counts a record as deployed when it sends it; under exactly-once a
        ``read_committed`` reader sees it only once its transaction has committed, a moment
        later. Without transactions the first read is already complete.
        """
        deadline = time.monotonic() + settle_s
        while True:
            read = await self.read(start, await self.ends())
            if len(read.values) >= count or time.monotonic() > deadline:
                return read
            await asyncio.sleep(0.2)


@dataclass(frozen=True)
class DeliveryCounts:
    """A round's deployment records counted by delivery id (each figure must be 0)."""

    #: deliveries of the round without a deployment record
    lost: int
    #: records of a delivery an earlier record announced (in the round or before it)
    duplicates: int
    #: records of deliveries that are not the round's (e.g. an earlier event announced again)
    outside: int


def delivery_counts(round_ids: set[str], ids: list[str], earlier: set[str]) -> DeliveryCounts:
    """Count by delivery id: ``round_ids`` the round's deliveries, ``ids`` those of the
    deployment records written since the round began, in order, ``earlier`` those of the records
    written before it. None of the figures can be negative."""
    announced = set(earlier)
    duplicates = 0
    for delivery in ids:
        duplicates += delivery in announced
        announced.add(delivery)
    return DeliveryCounts(
        lost=len(round_ids - set(ids)),
        duplicates=duplicates,
        outside=sum(delivery not in round_ids for delivery in ids),
    )


def middle_rate(timestamps_ms: list[int], share: float = 0.8) -> float:
    """Records per second over the middle ``share`` of the records, by record timestamp."""
    ordered = sorted(timestamps_ms)
    lo = int(len(ordered) * (1 - share) / 2)
    hi = len(ordered) - 1 - lo
    span = (ordered[hi] - ordered[lo]) / 1000
    return (hi - lo) / span if span > 0 else float("inf")


# --- the raw passthrough (child process) ------------------------------------------------------


async def raw_passthrough(
    bootstrap: str, source: str, target: str, count: int, batch: int, guarantee: str
) -> None:
    """Consume ``count`` records from ``source``, parse each with orjson, produce to ``target``.

    With ``exactly_once``, each fetched batch's outputs and its input offsets (for a group of
    its own) commit in one transaction, and the input is read ``read_committed``.
    """
    transactional = guarantee == "exactly_once"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        isolation_level="read_committed" if transactional else "read_uncommitted",
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        max_batch_size=batch,
        transactional_id=f"{target}-raw" if transactional else None,
    )
    await consumer.start()
    await producer.start()
    try:
        consumer.assign([TopicPartition(source, p) for p in range(PARTITIONS)])
        done = 0
        while done < count:
            batches = await consumer.getmany(timeout_ms=100, max_records=500)
            if not batches:
                continue
            if transactional:
                await producer.begin_transaction()
            futures = []
            for messages in batches.values():
                for m in messages:
                    value = orjson.loads(m.value)
                    futures.append(await producer.send(target, orjson.dumps(value), key=m.key))
            await asyncio.gather(*futures)
            if transactional:
                offsets = {tp: messages[-1].offset + 1 for tp, messages in batches.items()}
                await producer.send_offsets_to_transaction(offsets, f"{target}-raw")
                await producer.commit_transaction()
            done += len(futures)
    finally:
        await producer.stop()
        await consumer.stop()
    print(orjson.dumps({"cpu_s": time.process_time()}).decode(), flush=True)


# --- child processes --------------------------------------------------------------------------


class Child:
    """A child process (``synctrail <subcommand>`` or this module) with a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.started = time.time()
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", *args],
                env={**os.environ, **env},
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_mb(self) -> float:
        """Resident set size from ``/proc/<pid>/status`` (VmRSS), in MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.log.name}: exited with {self.process.returncode}\n{tail}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL (to the process group) if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


async def wait_http(child: Child, url: str, timeout: float, want: str | None = None) -> float:
    """Poll ``url`` until it answers 200 (containing ``want``); return the wall-clock time."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            child.check_alive()
            try:
                async with session.get(url) as response:
                    text = await response.text()
                    if response.status == 200 and (want is None or want in text):
                        return time.time()
            except (TimeoutError, aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} not ready in {timeout}s:\n{child.log.read_text()[-3000:]}")


# --- the phases -------------------------------------------------------------------------------


@dataclass
class Bench:
    """Shared state of one benchmark run."""

    bootstrap: str
    prefix: str
    work: Path
    template: str
    apps: int
    events: int
    figures: list[tuple[str, float, str]] = field(default_factory=list)
    worker_id: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex[:6]}")
    started_workers: int = 0
    children: list[Child] = field(default_factory=list)
    log_level: str = "WARNING"
    profile: Path | None = None
    broker_pid: int | None = None
    guarantee: str = "at_least_once"

    @property
    def committed(self) -> bool:
        """Read ``read_committed``: the outputs are written in transactions."""
        return self.guarantee == "exactly_once"

    def figure(self, name: str, value: float, unit: str) -> None:
        self.figures.append((name, value, unit))
        say(f"{name} = {value:.2f} {unit}")

    def topic(self, spec: TopicSpec) -> str:
        return spec.address(self.prefix)

    def timed_round(self, first_deploy: int) -> list[tuple[bytes, bytes]]:
        """``events`` real deploys: deploys ``first_deploy``, ``first_deploy + 1``, ... of every app."""
        out: list[tuple[bytes, bytes]] = []
        deploy = first_deploy
        while len(out) < self.events:
            count = min(self.apps, self.events - len(out))
            out += sync_events(self.template, range(count), deploy)
            deploy += 1
        return out

    def start_worker(self) -> tuple[Child, str]:
        self.started_workers += 1
        port = free_port()
        env = {
            "SYNCTRAIL_KAFKA_BOOTSTRAP": self.bootstrap,
            "SYNCTRAIL_TOPIC_PREFIX": self.prefix,
            "SYNCTRAIL_WORKER_ID": self.worker_id,
            "SYNCTRAIL_WORKER_WEB_PORT": str(port),
            "SYNCTRAIL_WORKER_DATA_DIR": str(self.work / f"worker-{self.started_workers}"),
            # as `synctrail dev` and the tests: a short session makes group joins quick
            "SYNCTRAIL_BROKER_SESSION_TIMEOUT_S": "6",
            "SYNCTRAIL_BROKER_REBALANCE_TIMEOUT_S": "6",
            "SYNCTRAIL_LOG_LEVEL": self.log_level,
            "SYNCTRAIL_PROCESSING_GUARANTEE": self.guarantee,
        }
        log = self.work / f"worker-{self.started_workers}.log"
        return self.child(["connectors.cli", "worker"], env, log), f"http://127.0.0.1:{port}"

    def child(self, args: list[str], env: dict[str, str], log: Path) -> Child:
        """Start a child process that ``stop_children`` will stop."""
        child = Child(args, env, log)
        self.children.append(child)
        return child

    def stop_children(self) -> None:
        """Stop every child still running (after a failure, say)."""
        for child in self.children:
            child.stop(10)

    async def raw(self, items: list[tuple[bytes, bytes]]) -> None:
        """The baseline: the passthrough once unmeasured, then once measured.

        The first pass warms the broker up as the preload does before the worker's timed
        round: a fresh Apache Kafka JVM spent 2-3x the CPU on its first 20,000 records (JIT
        compilation) that it spent on the next, on the two cores the passthrough shares.
        """
        await produce_all(self.bootstrap, self.topic(RAW_IN), items)
        await self.passthrough(RAW_WARM_UP, len(items))
        broker_before = cpu_seconds(self.broker_pid)
        cpu = await self.passthrough(RAW_OUT, len(items))
        broker_cpu = cpu_seconds(self.broker_pid) - broker_before
        say(f"raw: passthrough {cpu:.1f}s CPU, broker {broker_cpu:.1f}s CPU")
        async with TopicReader(self.bootstrap, self.topic(RAW_OUT), self.committed) as reader:
            # read_new: under exactly-once the last transaction's markers may still be on
            # their way when the passthrough exits (Kafka writes them after EndTxn answers)
            read = await reader.read_new({tp: 0 for tp in reader.tps}, len(items))
        self.figure("raw_events_per_s", middle_rate(read.timestamps), "events/s")
        self.figure("raw_cpu_us_per_event", cpu / len(items) * 1e6, "us")
        self.figure("raw_broker_cpu_us_per_event", broker_cpu / len(items) * 1e6, "us")

    async def passthrough(self, target: TopicSpec, count: int) -> float:
        """Run the raw passthrough (a child process) from RAW_IN to ``target``; its CPU seconds."""
        args = ["bench.stream", "--raw-passthrough", self.bootstrap, self.topic(RAW_IN)]
        args += [self.topic(target), str(count), "16384", self.guarantee]
        child = self.child(args, {}, self.work / f"{target.name}.log")
        await asyncio.to_thread(child.process.wait, 300)
        if child.process.returncode != 0:
            raise RuntimeError(f"raw passthrough failed:\n{child.log.read_text()[-3000:]}")
        return float(orjson.loads(child.log.read_text().splitlines()[-1])["cpu_s"])

    async def preload(self, deployments: TopicReader) -> None:
        """Worker 1 takes every app's first deploy; its RSS then counts A apps of state."""
        worker, url = self.start_worker()
        await wait_http(worker, f"{url}/readyz", 90)
        items = sync_events(self.template, range(self.apps), 0)
        say(f"preload: producing {len(items)} first deploys")
        t0 = time.time()
        await produce_all(self.bootstrap, self.topic(SYNC_EVENTS), items)
        await wait_deployed(worker, url, self.apps, "preload deployments")
        say(f"preload: {self.apps} apps deployed in {time.time() - t0:.1f}s")
        worker.check_alive()
        self.figure("worker_rss_preload_mb", worker.rss_mb(), "MiB")
        worker.stop()

    async def backlog(
        self, deployments: TopicReader, first_deploy: int, label: str
    ) -> tuple[Child, str, Read]:
        """Produce a timed round with no worker running, then start one and let it drain it."""
        items = self.timed_round(first_deploy)
        say(f"backlog: producing {len(items)} deploys (no worker running)")
        await produce_all(self.bootstrap, self.topic(SYNC_EVENTS), items)
        start = await deployments.written_ends()
        worker, url = self.start_worker()
        ready_at = await wait_http(worker, f"{url}/readyz", 90)
        self.figure(f"{label}_ready_s", ready_at - worker.started, "s")
        spy = self.spy(worker, label)
        cpu = cpu_seconds(worker.pid), cpu_seconds(self.broker_pid), time.monotonic()
        try:
            await wait_deployed(worker, url, len(items), "timed deployments")
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
        worker.check_alive()
        worker_cpu = cpu_seconds(worker.pid) - cpu[0]
        broker_cpu = cpu_seconds(self.broker_pid) - cpu[1]
        say(
            f"drain: {time.monotonic() - cpu[2]:.1f}s wall (from /readyz), "
            f"worker {worker_cpu:.1f}s CPU, broker {broker_cpu:.1f}s CPU"
        )
        read = await deployments.read_new(start, len(items))
        await self.count_deployments(deployments, start, items, read, label)
        self.figure(f"{label}_cpu_us_per_event", worker_cpu / len(read.values) * 1e6, "us")
        self.figure(f"{label}_broker_cpu_us_per_event", broker_cpu / len(read.values) * 1e6, "us")
        return worker, url, read

    async def throughput_and_recovery(self, deployments: TopicReader) -> tuple[Child, str]:
        worker, url, read = await self.backlog(deployments, 1, "stream")
        self.figure("recovery_s", min(read.timestamps) / 1000 - worker.started, "s")
        self.figure("stream_events_per_s", middle_rate(read.timestamps), "events/s")
        return worker, url

    async def end_to_end(
        self, deployments: TopicReader, worker: Child, url: str, rate: int, seconds: float
    ) -> None:
        """Bridge + worker at a steady rate; latency from each 202 to its deployment record."""
        port = free_port()
        env = {
            "SYNCTRAIL_KAFKA_BOOTSTRAP": self.bootstrap,
            "SYNCTRAIL_TOPIC_PREFIX": self.prefix,
            "SYNCTRAIL_BRIDGE_PORT": str(port),
            "SYNCTRAIL_BRIDGE_TOKENS": TOKEN,
            "SYNCTRAIL_BRIDGE_SPOOL_DIR": str(self.work / "spool"),
            "SYNCTRAIL_LOG_LEVEL": "WARNING",
        }
        bridge = self.child(["connectors.cli", "bridge"], env, self.work / "bridge.log")
        try:
            bridge_url = f"http://127.0.0.1:{port}"
            await wait_http(bridge, f"{bridge_url}/readyz", 60, want='"broker":"up"')
            count = int(rate * seconds)
            deploy = 1 + -(-self.events // self.apps)  # the deploy after the timed round's
            bodies = [
                envelope_body(self.template, app % self.apps, deploy + app // self.apps)
                for app in range(count)
            ]
            start = await deployments.written_ends()
            before = (await worker_metrics(url))[0].get("deployed", 0.0)
            say(f"e2e: {count} POSTs at {rate}/s")
            accepted = await paced_post(f"{bridge_url}/v1/sync", bodies, rate)
            await wait_deployed(worker, url, int(before) + count, "e2e deployments")
            self.figure("worker_rss_mb", max(worker.rss_mb(), self._preload_rss()), "MiB")
        finally:
            bridge.stop()
        read = await deployments.read_new(start, len(accepted))
        written = {
            orjson.loads(value)["delivery_id"]: ts / 1000
            for value, ts in zip(read.values, read.timestamps, strict=True)
        }
        latencies = sorted((written[d] - accepted[d]) * 1000 for d in accepted if d in written)
        self.figure("e2e_lost_events", len(accepted) - len(latencies), "events")
        self.figure("e2e_p50_ms", pct(latencies, 0.50), "ms")
        self.figure("e2e_p99_ms", pct(latencies, 0.99), "ms")
        self.figure("e2e_max_ms", latencies[-1], "ms")

    async def count_deployments(
        self,
        deployments: TopicReader,
        start: dict[TopicPartition, int],
        items: list[tuple[bytes, bytes]],
        read: Read,
        label: str,
    ) -> None:
        """The round's figures by delivery id (see :func:`delivery_counts`)."""
        round_ids = {orjson.loads(value)["delivery_id"] for _, value in items}
        ids = [orjson.loads(value)["delivery_id"] for value in read.values]
        earlier: set[str] = set()
        outside = [
            (partition, offset, delivery)
            for partition, offset, delivery in zip(read.partitions, read.offsets, ids, strict=True)
            if delivery not in round_ids
        ]
        if outside:  # only then can a record repeat one written before the round
            before = await deployments.read({tp: 0 for tp in deployments.tps}, start)
            earlier = {orjson.loads(value)["delivery_id"] for value in before.values}
            say(f"OUTSIDE THE ROUND (partition, offset, delivery): {outside[:20]}")
        counts = delivery_counts(round_ids, ids, earlier)
        self.figure(f"{label}_lost_events", counts.lost, "events")
        self.figure(f"{label}_duplicate_deployments", counts.duplicates, "records")
        self.figure(f"{label}_outside_round_deployments", counts.outside, "records")
        if counts.lost:
            say(f"LOST EVENTS: {await self.missing(deployments, start, items)}")

    async def missing(
        self, deployments: TopicReader, start: dict[TopicPartition, int], items: list[Any]
    ) -> str:
        """Which sync events of ``items`` have no deployment record (for error messages)."""
        read = await deployments.read(start, await deployments.ends())
        seen = {orjson.loads(v)["delivery_id"] for v in read.values}
        wanted = {orjson.loads(v)["delivery_id"] for _, v in items} - seen
        async with TopicReader(self.bootstrap, self.topic(SYNC_EVENTS)) as source:
            events = await source.read({tp: 0 for tp in source.tps}, await source.ends())
        ids = {orjson.loads(v)["delivery_id"] for _, v in items}
        round_start: dict[int, int] = {}
        gaps: dict[int, list[int]] = {}
        for partition, offset, value in zip(
            events.partitions, events.offsets, events.values, strict=True
        ):
            delivery = orjson.loads(value)["delivery_id"]
            if delivery in ids:
                round_start[partition] = min(offset, round_start.get(partition, offset))
            if delivery in wanted:
                gaps.setdefault(partition, []).append(offset)
        where = {
            p: f"round from {round_start[p]}, missing {min(o)}..{max(o)} ({len(o)})"
            for p, o in sorted(gaps.items())
        }
        return f"{len(wanted)} events: {where}"

    def spy(self, child: Child, name: str) -> subprocess.Popen[bytes] | None:
        """With ``--profile DIR``: py-spy samples ``child`` (collapsed stacks) until stopped."""
        if self.profile is None:
            return None
        self.profile.mkdir(parents=True, exist_ok=True)
        out = self.profile / f"{name}.txt"
        say(f"profiling worker {child.pid} into {out}")
        command = [_py_spy(), "record", "--format", "raw", "--rate", "200", "--nonblocking"]
        return subprocess.Popen(
            [*command, "--pid", str(child.pid), "-o", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _preload_rss(self) -> float:
        return next(v for n, v, _ in self.figures if n == "worker_rss_preload_mb")


def _py_spy() -> str:
    """py-spy from this interpreter's environment or PATH (``pip install py-spy``)."""
    found = shutil.which(
        "py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    if found is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found


async def worker_metrics(url: str) -> tuple[dict[str, float], list[float]]:
    """The worker's events-by-outcome counters and its consumer-lag gauges (``/metrics``)."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        text = await response.text()
    outcomes: dict[str, float] = {}
    lags: list[float] = []
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("synctrail_worker_events_total{"):
            outcomes[name.split('"')[1]] = float(value)
        elif name.startswith("synctrail_worker_consumer_lag{"):
            lags.append(float(value))
    return outcomes, lags


async def wait_deployed(child: Child, url: str, count: int, what: str, stall: float = 30) -> int:
    """Poll the worker's counters (not the broker) until it has deployed ``count`` events.

    Returns the number deployed. Returns early, with fewer, when nothing was deployed for 6 s
    and the worker reports no lag: events were lost rather than slow (see the module
    docstring). Fails when nothing was deployed for ``stall`` seconds.
    """
    now = time.monotonic()
    deadline, quiet, last = now + stall, now + 6, -1.0
    while True:
        child.check_alive()
        outcomes, lags = await worker_metrics(url)
        have = outcomes.get("deployed", 0.0)
        if have >= count:
            return int(have)
        now = time.monotonic()
        if have > last:
            deadline, quiet, last = now + stall, now + 6, have
        elif now > quiet and lags and not any(lags):
            return int(have)
        elif now > deadline:
            raise RuntimeError(f"timed out waiting for {what}: {have}/{count}; {outcomes}")
        await asyncio.sleep(0.25)


def pct(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of sorted values (nearest rank)."""
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def paced_post(url: str, bodies: list[bytes], rate: int) -> dict[str, float]:
    """POST ``bodies`` open-loop at ``rate``/s; the wall-clock time of each 202, by delivery id."""
    accepted: dict[str, float] = {}
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    failures: list[str] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:

        async def post(body: bytes) -> None:
            async with session.post(url, data=body, headers=headers) as response:
                text = await response.read()
                if response.status != 202:
                    failures.append(f"{response.status} {text[:200]!r}")
                    return
                accepted[orjson.loads(text)["delivery_id"]] = time.time()

        tasks = []
        with no_collector_pauses():
            begin = time.perf_counter()
            for i, body in enumerate(bodies):
                delay = begin + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(post(body)))
            await asyncio.gather(*tasks)
    if failures:
        raise RuntimeError(f"{len(failures)} deliveries refused, e.g. {failures[0]}")
    return accepted


async def run_all(bench: Bench, rate: int, seconds: float) -> None:
    """Every phase, in the order the module docstring gives."""
    topics = [RAW_IN, RAW_OUT, RAW_WARM_UP]
    await ensure_topics(bench.bootstrap, bench.prefix, PARTITIONS)
    await ensure_topics(bench.bootstrap, bench.prefix, PARTITIONS, topics=topics)
    say(f"building {bench.events} payloads")
    raw_items = bench.timed_round(1)
    size = sum(len(v) for _, v in raw_items) / len(raw_items)
    say(f"mean sync-event record {size:.0f} bytes, body {len(envelope_body(bench.template, 0, 1))}")
    await bench.raw(raw_items)
    del raw_items
    async with TopicReader(
        bench.bootstrap, bench.topic(DEPLOYMENTS), bench.committed
    ) as deployments:
        await bench.preload(deployments)
        worker, url = await bench.throughput_and_recovery(deployments)
        try:
            await bench.end_to_end(deployments, worker, url, rate, seconds)
        finally:
            worker.stop()


def runs(broker_option: str, guarantee_option: str) -> list[tuple[str, str]]:
    """The (broker, guarantee) pairs to run, in order; exactly-once only where transactions are."""
    guarantees = list(GUARANTEES) if guarantee_option == "both" else [guarantee_option]
    chosen = [
        (broker, guarantee)
        for broker in brokers.chosen(broker_option)
        for guarantee in guarantees
        if not (broker == "embedded" and guarantee == "exactly_once")
    ]
    if "exactly_once" in guarantees and "kafka" not in brokers.chosen(broker_option):
        say("exactly_once needs Apache Kafka (the embedded broker has no transactions): skipped")
    if not chosen:
        raise SystemExit("nothing to run: exactly_once runs on --broker kafka (or both) only")
    return chosen


def run_name(broker: str, guarantee: str) -> str:
    """The name prefix of a run's figures: ``kafka``, ``kafka.exactly_once``."""
    return broker if guarantee == "at_least_once" else f"{broker}.{guarantee}"


ORDER = [
    "raw_events_per_s",
    "stream_events_per_s",
    "stream_ratio",
    "raw_cpu_us_per_event",
    "stream_cpu_us_per_event",
    "raw_broker_cpu_us_per_event",
    "stream_broker_cpu_us_per_event",
    "e2e_p50_ms",
    "e2e_p99_ms",
    "recovery_s",
    "worker_rss_mb",
]


def report(name: str, figures: list[tuple[str, float, str]]) -> list[str]:
    """The BENCH lines of one run, ``stream_ratio`` added, each named with the run."""
    by_name = {figure: (value, unit) for figure, value, unit in figures}
    stream, raw = by_name["stream_events_per_s"][0], by_name["raw_events_per_s"][0]
    by_name["stream_ratio"] = (stream / raw, "x")
    return [
        f"BENCH {name}.{figure} {by_name[figure][0]:.2f} {by_name[figure][1]}"
        for figure in [n for n in ORDER if n in by_name] + [n for n in by_name if n not in ORDER]
    ]


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.stream``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.stream",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--broker",
        choices=(*brokers.BROKERS, "both"),
        default="both",
        help="the broker(s) to run on, one after the other (default: both)",
    )
    parser.add_argument(
        "--processing-guarantee",
        choices=(*GUARANTEES, "both"),
        default="at_least_once",
        help="the workers' SYNCTRAIL_PROCESSING_GUARANTEE; exactly_once runs on Apache Kafka only",
    )
    parser.add_argument("--apps", type=int, default=10_000, help="apps with state (A)")
    parser.add_argument("--events", type=int, default=20_000, help="events per timed round (N)")
    parser.add_argument("--rate", type=int, default=200, help="deliveries/s for the e2e figure")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the e2e run")
    parser.add_argument("--log-level", default="WARNING", help="log level of the children")
    parser.add_argument(
        "--profile",
        type=Path,
        help="sample the draining workers with py-spy (collapsed stacks written to this folder)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the logs folder")
    parser.add_argument("--raw-passthrough", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.profile is not None:
        _py_spy()  # fail before the run, not in the middle of it
    if args.raw_passthrough:
        bootstrap, source, target, count, batch, guarantee = args.raw_passthrough
        run = raw_passthrough(bootstrap, source, target, int(count), int(batch), guarantee)
        asyncio.run(run)
        return 0

    plan = runs(args.broker, args.processing_guarantee)
    work = Path(tempfile.mkdtemp(prefix="synctrail-bench-stream-"))
    template = TEMPLATE.read_text()
    began = time.monotonic()
    try:
        for broker_name in dict.fromkeys(broker for broker, _ in plan):
            with brokers.running(broker_name, work / broker_name) as broker:
                say(f"{broker_name} broker on {broker.bootstrap} (pid {broker.pid})")
                for guarantee in [g for b, g in plan if b == broker_name]:
                    name = run_name(broker_name, guarantee)
                    run_work = work / name
                    run_work.mkdir(parents=True, exist_ok=True)
                    bench = Bench(
                        broker_pid=broker.pid,
                        bootstrap=broker.bootstrap,
                        prefix=f"bench{uuid.uuid4().hex[:6]}.",
                        work=run_work,
                        template=template,
                        apps=args.apps,
                        events=args.events,
                        log_level=args.log_level,
                        profile=args.profile / name if args.profile else None,
                        guarantee=guarantee,
                    )
                    say(f"run {name}: {guarantee} on the {broker_name} broker")
                    try:
                        asyncio.run(run_all(bench, args.rate, args.seconds))
                    finally:
                        bench.stop_children()
                    for line in report(name, bench.figures):  # now: a later run may fail
                        print(line, flush=True)
    except BaseException:
        say(f"failed; logs kept in {work}")
        raise
    say(f"done in {time.monotonic() - began:.0f}s")
    if args.keep:
        say(f"logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
