"""Slow and abusive clients: deadlines for the request head and body, the connection bound, and
what a body must declare (JSON) and must not repeat (identity keys)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from connectors.bridge.validation import Rejection, check_identity_keys_unique
from connectors.broker import EmbeddedBroker, free_port
from tests.compose.metrics_text import http_status, scrape
from tests.connectors.bridge.helpers import (
    AUTH,
    TOKEN,
    bridge_settings,
    envelope,
    running_bridge,
)
from tests.support import REPO, wait_for

SLOW_CLIENTS = 1_100
FD_LIMIT = 1_024


class BridgeProcess:
    """``synctrail bridge`` in a child process, optionally under a lower open-file limit."""

    def __init__(self, env: dict[str, str], log_path: Path, fd_limit: int | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {**os.environ, **env, "SYNCTRAIL_BRIDGE_PORT": str(self.port)}
        self.fd_limit = fd_limit
        self.process: subprocess.Popen[bytes] | None = None

    def _limit(self) -> None:  # pragma: no cover - runs in the child before exec
        if self.fd_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.fd_limit, self.fd_limit))

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: ASYNC220 - Popen returns at once
                [sys.executable, "-m", "connectors.cli", "bridge"],
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=self._limit,
            )

        async def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"bridge exited:\n{self.log_path.read_text()[-3000:]}")
            return await http_status(f"{self.url}/readyz") == 200

        await wait_for(ready, timeout=30, what="bridge ready")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@contextlib.asynccontextmanager
async def bridge_process(
    broker: EmbeddedBroker, topics: str, tmp_path: Path, fd_limit: int | None = None, **env: str
) -> AsyncIterator[BridgeProcess]:
    process = BridgeProcess(
        {
            "SYNCTRAIL_KAFKA_BOOTSTRAP": broker.bootstrap,
            "SYNCTRAIL_TOPIC_PREFIX": topics,
            "SYNCTRAIL_BRIDGE_TOKENS": TOKEN,
            "SYNCTRAIL_BRIDGE_SPOOL_DIR": str(tmp_path / "spool"),
            **env,
        },
        tmp_path / "bridge.log",
        fd_limit,
    )
    await process.start()
    try:
        yield process
    finally:
        process.stop()


async def _answer_and_close(reader: asyncio.StreamReader, within_s: float) -> tuple[bytes, float]:
    """Everything the bridge sends until it closes the connection, and how long that took."""
    started = time.monotonic()
    data = await asyncio.wait_for(reader.read(), within_s)
    return data, time.monotonic() - started


async def _trickle(writer: asyncio.StreamWriter, parts: list[bytes], every_s: float) -> None:
    with contextlib.suppress(ConnectionError):
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(every_s)  # the slow client itself: a byte now and then


async def test_each_kind_of_slow_client_is_closed_within_its_deadline(
    broker: EmbeddedBroker, topics: str, tmp_path: Path
) -> None:
    # aiohttp closes a connection idle past the keep-alive time even if part of a head came
    # (silently): the head deadline must be the shorter one to answer 408
    head_s, body_s, idle_s = 1.0, 1.5, 2.5
    async with bridge_process(
        broker,
        topics,
        tmp_path,
        SYNCTRAIL_BRIDGE_HEAD_TIMEOUT_S=str(head_s),
        SYNCTRAIL_BRIDGE_BODY_TIMEOUT_S=str(body_s),
        SYNCTRAIL_BRIDGE_KEEPALIVE_S=str(idle_s),
    ) as bridge:
        auth = f"Host: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n".encode()
        request_line = b"POST /v1/sync HTTP/1.1\r\n"
        slow = {
            # request line never finished, one byte a second
            "request_line": [request_line[i : i + 1] for i in range(len(request_line))],
            # headers never finished
            "headers": [request_line, auth, *([b"X-Slow: 1\r\n"] * 20)],
            # a declared body trickled in
            "content_length": [
                request_line + auth + b"Content-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n",
                *([b"{"] * 20),
            ],
            # a chunked body that never ends
            "chunked": [
                request_line + auth + b"Content-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n",
                *([b"1\r\n{\r\n"] * 20),
            ],
            # connected, nothing sent
            "idle": [],
        }
        deadline = {
            "request_line": head_s,
            "headers": head_s,
            "content_length": body_s,
            "chunked": body_s,
            "idle": idle_s,
        }
        connections = {
            name: await asyncio.open_connection("127.0.0.1", bridge.port) for name in slow
        }
        tricklers = [
            asyncio.create_task(_trickle(connections[name][1], parts, 0.5))
            for name, parts in slow.items()
        ]
        try:
            for name, (reader, _) in connections.items():
                answer, took = await _answer_and_close(reader, deadline[name] + 10)
                assert took < deadline[name] + 5, (name, took)
                if name == "idle":
                    assert answer == b"", "an idle connection is closed without an answer"
                else:
                    assert answer.startswith(b"HTTP/1.1 408"), (name, answer[:200])
                    expected = "HEAD" if deadline[name] == head_s else "BODY"
                    assert f"SYNCTRAIL_BRIDGE_{expected}_TIMEOUT_S".encode() in answer
        finally:
            for task in tricklers:
                task.cancel()
            for _, writer in connections.values():
                writer.close()
        samples = await scrape(f"{bridge.url}/metrics")
        closed = "synctrail_bridge_connections_closed_total"
        assert samples.value(closed, reason="head_timeout") == 2
        assert samples.value(closed, reason="body_timeout") == 2
        # a client that sends its request at once is unaffected
        async with aiohttp.ClientSession() as session:
            resp = await session.post(
                f"{bridge.url}/v1/sync", data=envelope("fast", 1), headers=AUTH
            )
            assert resp.status == 202
        closing = [
            line for line in bridge.log_path.read_text().splitlines() if "closing a client" in line
        ]
        assert len(closing) == 1, "two head timeouts of one client: logged once a minute"
        assert '"reason":"head_timeout"' in closing[0]


async def test_slow_connections_past_the_open_file_limit_do_not_refuse_real_deliveries(
    broker: EmbeddedBroker, topics: str, tmp_path: Path
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = SLOW_CLIENTS + 256
    if soft < needed:  # this test process holds the slow clients' sockets
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed * 2), hard))
    async with bridge_process(broker, topics, tmp_path, fd_limit=FD_LIMIT) as bridge:
        held: list[asyncio.StreamWriter] = []
        try:
            for _ in range(SLOW_CLIENTS):  # each sends part of a request line, then nothing
                with contextlib.suppress(ConnectionError):
                    _, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
                    writer.write(b"POST /v1/sy")
                    held.append(writer)
            started = time.monotonic()
            async with aiohttp.ClientSession() as session:
                for seq in range(3):
                    resp = await asyncio.wait_for(
                        session.post(
                            f"{bridge.url}/v1/sync", data=envelope("real", seq), headers=AUTH
                        ),
                        15,
                    )
                    assert resp.status == 202
            assert time.monotonic() - started < 15
            samples = await scrape(f"{bridge.url}/metrics")
            shed = samples.value("synctrail_bridge_connections_closed_total", reason="shed")
            assert shed is not None and shed >= SLOW_CLIENTS - (FD_LIMIT - 256)
            open_now = samples.value("synctrail_bridge_connections")
            assert open_now is not None and open_now <= FD_LIMIT - 256
        finally:
            for writer in held:
                writer.close()


async def test_a_body_declared_as_anything_but_json_gets_415_naming_the_header(
    broker: EmbeddedBroker, topics: str, tmp_path: Path
) -> None:
    settings = bridge_settings(broker.bootstrap, topics, tmp_path)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with running_bridge(settings) as (client, _):
        for declared in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
            resp = await client.post(
                "/v1/sync", data=envelope("ct", 1), headers={**auth, "Content-Type": declared}
            )
            assert resp.status == 415
            assert "Content-Type" in (await resp.json())["error"]
        for declared in ("application/json", "application/json; charset=utf-8"):
            resp = await client.post(
                "/v1/sync", data=envelope("ct", 2), headers={**auth, "Content-Type": declared}
            )
            assert resp.status == 202, declared
        bare = await client.post(
            "/v1/sync/guestbook", data=b"{}", headers={**auth, "Content-Type": "text/plain"}
        )
        assert bare.status == 415


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (
            b'{"schemaVersion":1,"app":{"name":"a","namespace":"argocd","name":"b"},'
            b'"syncResult":{"resources":[]}}',
            "`app.name`",
        ),
        (
            b'{"app":{"name":"a","namespace":"argocd","namespace":"other"},"syncResult":{}}',
            "`app.namespace`",
        ),
        (b'{"app":{"name":"a"},"syncResult":{},"app":{"name":"b"}}', "`app`"),
        # a key spelt with an escape is the same key to a JSON reader
        (b'{"app":{"name":"a","na\\u006de":"b"},"syncResult":{}}', "`app.name`"),
        # nested objects in app: the whole body is checked
        (b'{"app":{"x":{},"name":"a","name":"b"},"syncResult":{}}', "`name`"),
    ],
)
def test_identity_keys_that_appear_twice_are_refused_naming_the_key(
    body: bytes, named: str
) -> None:
    with pytest.raises(Rejection) as refused:
        check_identity_keys_unique(body)
    assert refused.value.status == 400
    assert named in refused.value.message


def test_identity_keys_once_each_pass(tmp_path: Path) -> None:
    check_identity_keys_unique(envelope("once", 1))
    # a resource's name beside the app's is not a duplicate: they are in different objects
    check_identity_keys_unique(
        b'{"app":{"name":"a","namespace":"n"},"labels":{"app":"x"},'
        b'"syncResult":{"resources":[{"name":"r","namespace":"n"},{"name":"s"}]}}'
    )


async def test_duplicate_identity_keys_get_400_through_the_bridge(
    broker: EmbeddedBroker, topics: str, tmp_path: Path
) -> None:
    settings = bridge_settings(broker.bootstrap, topics, tmp_path)
    body = envelope("dup", 1).replace(b'"name": "dup"', b'"name": "dup", "name": "other"', 1)
    body = body.replace(b'"name":"dup"', b'"name":"dup","name":"other"', 1)
    assert body.count(b'"other"') == 1, "the test body must carry the duplicate"
    async with running_bridge(settings) as (client, _):
        resp = await client.post("/v1/sync", data=body, headers=AUTH)
        assert resp.status == 400
        assert "`app.name` appears twice" in (await resp.json())["error"]
