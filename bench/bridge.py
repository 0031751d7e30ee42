"""Bridge benchmark: the real bridge against a bare aiohttp handler, same load, same machine.

``python -m bench.bridge`` (``make bench``) starts each broker in turn (``--broker``: the
embedded one and Apache Kafka, see ``bench.brokers``) and, on it, the bridge (a child
process, as in production) and a bare aiohttp server whose handler only reads the body and
answers 202. wrk (1 thread, 32 connections) POSTs ``03-guestbook-rev-b.json`` to both, in
alternating rounds so that a noisy machine hurts both alike; the medians are reported. A third
server in the same rounds is the issue's reference point (``naive_*``): a handler that only
parses the body with orjson and awaits an aiokafka ``send_and_wait`` (acks=all), which the issue
measured at a ratio of 0.32 on its machine; ``bridge_vs_naive`` compares the bridge with it.

Each of those runs also reads, from ``/proc``, the CPU time the server (and, for the servers
that produce, the broker) used per request: ``*_cpu_us_per_req``. They show whether a server
was bound by its own core (CPU per request times req/s near one second per second) and what
the broker costs per request. They are not steadier than the throughput on a shared machine:
the bare handler's own CPU per request was measured at 81 to 138 µs in rounds minutes apart.

Then an open-loop client starts requests at a steady 1,000 req/s, whatever the answers, and
measures each latency from the request's scheduled start (so a stall is not hidden by the
client waiting). It runs against the bridge, the bare handler and the broker itself (an
aiokafka ``send_and_wait`` of a record of the same size, acks=all: the floor under the bridge's
"202 only once the broker acknowledged" latency, ``broker_p*_at_*_rps_ms``), in alternating
rounds; per-round p50/p99 are reported as medians over the rounds.
The client does not collect garbage during a run (``bench.loadgen``): its own pauses would
otherwise show up as the server's latency.

Output: one ``BENCH <broker>.<name> <value> <unit>`` line per figure (``BENCH
kafka.bridge_ratio``): everything, the bare handler's rounds included, is measured again on each
broker, and every ratio is taken between rounds of the same broker. Needs wrk
(``apt-get install -y wrk``); without it the script says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench import brokers
from bench.loadgen import cpu_seconds, no_collector_pauses
from streams.kafka.topics import SYNC_EVENTS

REPO = Path(__file__).resolve().parents[1]
BODY = REPO / "examples" / "payloads" / "03-guestbook-rev-b.json"
TOKEN = "bench-token"

LUA = """\
local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
"""


def serve_bare(port: int) -> None:
    """The baseline: read the body, answer 202 (no validation, no Kafka)."""
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=202, body=b'{"accepted":true}', content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/sync", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def serve_naive(port: int, bootstrap: str, topic: str) -> None:
    """The issue's reference point: parse the body with orjson, ``send_and_wait`` it (acks=all).

    No validation, no batching of its own, no spool: what a first bridge would do.
    """
    from aiohttp import web
    from aiokafka import AIOKafkaProducer

    producer_key = web.AppKey("producer", AIOKafkaProducer)  # made in the server's loop

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        orjson.loads(body)
        await request.app[producer_key].send_and_wait(topic, body, key=b"argocd/guestbook")
        return web.Response(status=202, body=b'{"accepted":true}', content_type="application/json")

    async def lifecycle(app: web.Application) -> Any:
        producer = app[producer_key] = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        yield
        await producer.stop()

    app = web.Application()
    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/v1/sync", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def _free_port() -> int:
    from connectors.broker import free_port

    return free_port()


async def _wait_http(url: str, timeout: float = 30.0, want: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as resp:
                    text = await resp.text()
                    if resp.status < 500 and (want is None or want in text):
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout}s")


@contextmanager
def _child(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _parse_ms(text: str) -> float:
    value = float(re.match(r"[\d.]+", text).group(0))  # type: ignore[union-attr]
    if text.endswith("us"):
        return value / 1000
    if text.endswith("ms"):
        return value
    if text.endswith("s"):
        return value * 1000
    return value


def run_wrk(url: str, seconds: int, lua: Path, env: dict[str, str]) -> dict[str, float]:
    """One wrk run; returns req/s, requests, p50/p99 in ms and the count of non-2xx answers."""
    cmd = ["wrk", "-t1", "-c32", f"-d{seconds}s", "--latency", "-s", str(lua), url]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p50 = _parse_ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _parse_ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors:.*", out)
    return {
        "rps": rps,
        "requests": requests,
        "p50": p50,
        "p99": p99,
        "errors": float(errors.group(1)) if errors else 0.0,
        "socket_errors": 1.0 if socket_errors else 0.0,
    }


def run_wrk_measured(
    url: str, seconds: int, lua: Path, env: dict[str, str], server: int, broker: int | None
) -> dict[str, float]:
    """:func:`run_wrk` plus the CPU time the server and the broker used per request."""
    before = cpu_seconds(server), cpu_seconds(broker)
    out = run_wrk(url, seconds, lua, env)
    after = cpu_seconds(server), cpu_seconds(broker)
    requests = max(out["requests"], 1.0)
    out["cpu_us"] = (after[0] - before[0]) / requests * 1e6
    out["broker_cpu_us"] = (after[1] - before[1]) / requests * 1e6
    return out


class _Conn:
    """One keep-alive HTTP/1.1 connection speaking just enough HTTP for this benchmark.

    A hand-rolled client costs a fraction of aiohttp's client CPU, so on a small machine the
    figure measures the bridge rather than the load generator.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def post(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self.reader.readexactly(length)
        return status


Send = Callable[[], Awaitable[bool]]


async def open_loop(rate: int, seconds: float, send: Send) -> tuple[list[float], int]:
    """Start ``send()`` ``rate`` times a second whatever the answers.

    Returns the latencies (ms) of the sends that succeeded, each from its scheduled start, and
    how many failed.
    """
    latencies: list[float] = []
    failures = 0

    async def one(scheduled: float) -> None:
        nonlocal failures
        if await send():
            latencies.append((time.perf_counter() - scheduled) * 1000)
        else:
            failures += 1

    tasks = []
    with no_collector_pauses():
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(scheduled)))
        await asyncio.gather(*tasks)
    return latencies, failures


async def paced(url: str, rate: int, seconds: float, body: bytes) -> list[float]:
    """Open-loop POSTs of ``body`` to ``url`` (keep-alive connections, as many as in flight)."""
    host, _, port = url.split("//", 1)[1].split("/", 1)[0].partition(":")
    path = "/" + url.split("//", 1)[1].split("/", 1)[1]
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    idle: list[_Conn] = []

    async def send() -> bool:
        conn = idle.pop() if idle else _Conn(*await asyncio.open_connection(host, int(port)))
        status = await conn.post(request)
        idle.append(conn)
        return status == 202

    try:
        latencies, failures = await open_loop(rate, seconds, send)
    finally:
        for conn in idle:
            conn.writer.close()
    if failures:
        raise RuntimeError(f"{failures} paced requests to {url} failed")
    return latencies


async def paced_kafka(
    bootstrap: str, topic: str, rate: int, seconds: float, value: bytes
) -> list[float]:
    """Open-loop ``send_and_wait`` of one keyed record, acks=all: the broker's own latency.

    The producer is configured like the bridge's (no linger, batches up to 512 KiB), so that
    records sent while a request is in flight go together in the next one, as in the bridge.
    """
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,
        linger_ms=0,
        max_batch_size=512 * 1024,
    )
    await producer.start()

    async def send() -> bool:
        try:
            await producer.send_and_wait(topic, value, key=b"argocd/guestbook")
        except KafkaError:
            return False
        return True

    try:
        await open_loop(rate, 1.0, send)  # warm-up: connections, metadata
        latencies, failures = await open_loop(rate, seconds, send)
    finally:
        await producer.stop()
    if failures:
        print(f"bench.bridge: {failures} records to the broker failed", file=sys.stderr)
    return latencies


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench(
    seconds: int,
    rounds: int,
    rate: int,
    paced_seconds: float,
    paced_rounds: int,
    broker_option: str = "both",
) -> int:
    """Run everything on each chosen broker and print the BENCH lines."""
    if shutil.which("wrk") is None:
        print(
            "bench.bridge needs wrk: install it with `sudo apt-get install -y wrk` "
            "(Debian/Ubuntu) or `brew install wrk` (macOS), then run `make bench` again.",
            file=sys.stderr,
        )
        return 2
    work = Path(tempfile.mkdtemp(prefix="synctrail-bench-"))
    try:
        for name in brokers.chosen(broker_option):
            with brokers.running(name, work / name) as broker:
                print(f"bench.bridge: on the {name} broker ({broker.bootstrap})", file=sys.stderr)
                lines = on_broker(
                    broker, work / name, seconds, rounds, rate, paced_seconds, paced_rounds
                )
            for line in lines:
                print(f"BENCH {name}.{line}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def on_broker(
    broker: brokers.Broker,
    work: Path,
    seconds: int,
    rounds: int,
    rate: int,
    paced_seconds: float,
    paced_rounds: int,
) -> list[str]:
    """Every measurement on one running broker; the figures as ``<name> <value> <unit>``."""
    from streams.kafka.setup import ensure_topics

    lua = work / "post.lua"
    lua.write_text(LUA)
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    asyncio.run(ensure_topics(broker.bootstrap, prefix, 8))
    bridge_port, bare_port, naive_port = _free_port(), _free_port(), _free_port()
    env = {
        **os.environ,
        "SYNCTRAIL_KAFKA_BOOTSTRAP": broker.bootstrap,
        "SYNCTRAIL_TOPIC_PREFIX": prefix,
        "SYNCTRAIL_BRIDGE_PORT": str(bridge_port),
        "SYNCTRAIL_BRIDGE_TOKENS": TOKEN,
        "SYNCTRAIL_BRIDGE_SPOOL_DIR": str(work / "spool"),
        "SYNCTRAIL_LOG_LEVEL": "WARNING",
    }
    bridge_cmd = [sys.executable, "-m", "connectors.cli", "bridge"]
    bare_cmd = [sys.executable, "-m", "bench.bridge", "--serve-bare", str(bare_port)]
    naive_cmd = [sys.executable, "-m", "bench.bridge", "--serve-naive", str(naive_port)]
    naive_cmd += [broker.bootstrap, SYNC_EVENTS.address(prefix)]
    with (
        _child(bridge_cmd, env, work / "bridge.log") as bridge_proc,
        _child(bare_cmd, env, work / "bare.log") as bare_proc,
        _child(naive_cmd, env, work / "naive.log") as naive_proc,
    ):
        bridge_url = f"http://127.0.0.1:{bridge_port}"
        bare_url = f"http://127.0.0.1:{bare_port}"
        naive_url = f"http://127.0.0.1:{naive_port}"
        asyncio.run(_wait_http(f"{bridge_url}/readyz", want='"broker":"up"'))
        asyncio.run(_wait_http(f"{bare_url}/"))
        asyncio.run(_wait_http(f"{naive_url}/"))
        wrk_env = {**os.environ, "BENCH_BODY_FILE": str(BODY), "BENCH_TOKEN": TOKEN}
        for url in (bare_url, bridge_url, naive_url):  # warm-up
            run_wrk(f"{url}/v1/sync", 2, lua, wrk_env)
        bare_runs: list[dict[str, float]] = []
        bridge_runs: list[dict[str, float]] = []
        naive_runs: list[dict[str, float]] = []
        servers = (
            (bare_runs, bare_url, bare_proc.pid, None),
            (bridge_runs, bridge_url, bridge_proc.pid, broker.pid),
            (naive_runs, naive_url, naive_proc.pid, broker.pid),
        )
        for _ in range(rounds):
            for runs, url, pid, broker_pid in servers:
                out = run_wrk_measured(f"{url}/v1/sync", seconds, lua, wrk_env, pid, broker_pid)
                runs.append(out)
        # The same steady load on the bridge, on the bare handler (what this machine and
        # the client add by themselves) and on the broker alone (the acknowledgement).
        steady: dict[str, list[list[float]]] = {"bridge": [], "bare": [], "broker": []}
        body, topic = BODY.read_bytes(), SYNC_EVENTS.address(prefix)
        for _ in range(paced_rounds):
            for name, url in (("bridge", bridge_url), ("bare", bare_url)):
                run = paced(f"{url}/v1/sync", rate, paced_seconds, body)
                steady[name].append(asyncio.run(run))
            run = paced_kafka(broker.bootstrap, topic, rate, paced_seconds, body)
            steady["broker"].append(asyncio.run(run))

    def med(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    bare_rps, bridge_rps = med(bare_runs, "rps"), med(bridge_runs, "rps")
    lines: list[str] = []
    lines.append(f"bare_req_per_s {bare_rps:.0f} req/s")
    lines.append(f"bridge_req_per_s {bridge_rps:.0f} req/s")
    lines.append(f"bridge_ratio {bridge_rps / bare_rps:.2f} x")
    # Each round's bridge run against the bare run just before it: the spread shows how much
    # of a difference between two `make bench` runs is the machine.
    paired = [b["rps"] / a["rps"] for a, b in zip(bare_runs, bridge_runs, strict=True)]
    lines.append(f"bridge_ratio_round_min {min(paired):.2f} x")
    lines.append(f"bridge_ratio_round_max {max(paired):.2f} x")
    naive_rps = med(naive_runs, "rps")
    lines.append(f"naive_req_per_s {naive_rps:.0f} req/s")
    lines.append(f"naive_ratio {naive_rps / bare_rps:.2f} x")
    lines.append(f"bridge_vs_naive {bridge_rps / naive_rps:.2f} x")
    lines.append(f"bare_cpu_us_per_req {med(bare_runs, 'cpu_us'):.0f} us")
    lines.append(f"bridge_cpu_us_per_req {med(bridge_runs, 'cpu_us'):.0f} us")
    lines.append(f"bridge_broker_cpu_us_per_req {med(bridge_runs, 'broker_cpu_us'):.0f} us")
    lines.append(f"naive_cpu_us_per_req {med(naive_runs, 'cpu_us'):.0f} us")
    lines.append(f"bare_p50_ms {med(bare_runs, 'p50'):.2f} ms")
    lines.append(f"bare_p99_ms {med(bare_runs, 'p99'):.2f} ms")
    lines.append(f"bridge_p50_ms {med(bridge_runs, 'p50'):.2f} ms")
    lines.append(f"bridge_p99_ms {med(bridge_runs, 'p99'):.2f} ms")
    lines.append(f"bridge_non_2xx {sum(r['errors'] for r in bridge_runs):.0f} responses")
    for name in ("bridge", "bare", "broker"):
        for q in (50, 99):
            value = statistics.median(_pct(run, q / 100) for run in steady[name])
            lines.append(f"{name}_p{q}_at_{rate}_rps_ms {value:.2f} ms")
    return lines


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.bridge``."""
    parser = argparse.ArgumentParser(prog="python -m bench.bridge", description=__doc__)
    parser.add_argument("--seconds", type=int, default=8, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating bare/bridge rounds")
    parser.add_argument("--rate", type=int, default=1000, help="steady rate for the p99 figure")
    parser.add_argument("--paced-seconds", type=float, default=8.0, help="length of those runs")
    parser.add_argument(
        "--paced-rounds", type=int, default=3, help="alternating bridge/bare/broker steady runs"
    )
    parser.add_argument(
        "--broker",
        choices=(*brokers.BROKERS, "both"),
        default="both",
        help="the broker(s) to run on, one after the other (default: both)",
    )
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-naive", nargs=3, metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0
    if args.serve_naive:
        port, bootstrap, topic = args.serve_naive
        serve_naive(int(port), bootstrap, topic)
        return 0
    return bench(
        args.seconds,
        args.rounds,
        args.rate,
        args.paced_seconds,
        args.paced_rounds,
        args.broker,
    )


if __name__ == "__main__":
    sys.exit(main())
