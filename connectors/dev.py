"""``synctrail dev``: the whole pipeline on a laptop, one process tree, Ctrl-C stops it all.

Starts the embedded broker, creates the topics, then runs every synctrail process as a child
(bridge, worker, Slack connector in console mode unless Slack credentials are set, exporter)
and prints how to post the example payloads. Children get the parent-death signal, so even a
SIGKILLed ``dev`` leaves nothing behind.

What the terminal shows is for a person, not a log shipper: the children log text lines at
WARNING (a ``SYNCTRAIL_LOG_LEVEL`` / ``SYNCTRAIL_LOG_FORMAT`` given in the environment or the
``SYNCTRAIL_ENV_FILE`` wins, e.g. ``SYNCTRAIL_LOG_LEVEL=INFO make run`` for everything), the
Slack connector prints each message as it would post it, and ``dev`` itself prints one line per
decision of the worker, read from the topics (``connectors.dev_feed``). The processes themselves are unchanged: run directly
(``synctrail worker``, ...) they log JSON at INFO as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import secrets
import signal
import sys
import time
from asyncio.subprocess import Process
from pathlib import Path

import aiohttp

from connectors import dev_feed
from connectors.broker import EmbeddedBroker, die_with_parent, free_port
from streams import logs
from streams.kafka.setup import ensure_topics
from streams.settings import CommonSettings

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "payloads"

# (subcommand, module that must exist for it to run)
_CHILDREN = (
    ("bridge", "connectors.bridge.server"),
    ("worker", "streams.worker"),
    ("slack", "connectors.slack.service"),
    ("exporter", "connectors.exporter"),
)


def free_port_is(port: int) -> bool:
    """True if ``port`` can be bound on loopback now."""
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# What the children log unless the settings say otherwise: warnings, as text lines.
DEV_LOG_LEVEL = "WARNING"
DEV_LOG_FORMAT = "text"


def dev_logging(settings: CommonSettings) -> tuple[str, str]:
    """Log level and format under ``dev``: the settings' if set anywhere, else the dev ones."""
    given = settings.model_fields_set
    return (
        settings.log_level if "log_level" in given else DEV_LOG_LEVEL,
        settings.log_format if "log_format" in given else DEV_LOG_FORMAT,
    )


def _child_env(bootstrap: str, token: str, settings: CommonSettings) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("SYNCTRAIL_BRIDGE_TOKENS", token)
    env["SYNCTRAIL_LOG_LEVEL"], env["SYNCTRAIL_LOG_FORMAT"] = dev_logging(settings)
    env.update(
        {
            "SYNCTRAIL_KAFKA_BOOTSTRAP": bootstrap,
            # the embedded broker makes a first group join wait about the rebalance timeout
            "SYNCTRAIL_BROKER_SESSION_TIMEOUT_S": env.get(
                "SYNCTRAIL_BROKER_SESSION_TIMEOUT_S", "6"
            ),
            "SYNCTRAIL_BROKER_REBALANCE_TIMEOUT_S": env.get(
                "SYNCTRAIL_BROKER_REBALANCE_TIMEOUT_S", "6"
            ),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


async def _wait_http_ok(url: str, deadline_s: float, procs: list[Process]) -> bool:
    deadline = time.monotonic() + deadline_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if any(p.returncode is not None for p in procs):
                return False
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return True
            await asyncio.sleep(0.2)
    return False


async def _serve(settings: CommonSettings) -> int:
    port = 9092 if free_port_is(9092) else free_port()
    broker = EmbeddedBroker(port=port)
    await broker.start()
    procs: list[Process] = []
    feed: asyncio.Task[None] | None = None
    try:
        await ensure_topics(broker.bootstrap, settings.topic_prefix, settings.partitions)
        feed = await _start_feed(broker.bootstrap, settings)
        token = os.environ.get("SYNCTRAIL_BRIDGE_TOKENS", "").split(",")[
            0
        ] or secrets.token_urlsafe(24)
        env = _child_env(broker.bootstrap, token, settings)
        names = await _start_children(env, procs)
        host = env.get("SYNCTRAIL_BRIDGE_HOST", "127.0.0.1")
        bridge_url = f"http://{host}:{env.get('SYNCTRAIL_BRIDGE_PORT', '8080')}"
        if not await _wait_http_ok(f"{bridge_url}/readyz", 30, procs):
            print("synctrail dev: the bridge did not become ready; see the logs above", flush=True)
            return 1
        _print_welcome(broker.bootstrap, bridge_url, token, env)
        return await _watch(names, procs, feed)
    finally:
        await _stop(feed, procs)
        broker.stop()


async def _start_feed(bootstrap: str, settings: CommonSettings) -> asyncio.Task[None]:
    """Start the event lines (``connectors.dev_feed``); wait up to 30 s for it to be reading."""
    feed_ready = asyncio.Event()
    feed = asyncio.create_task(dev_feed.feed(bootstrap, settings.topic_prefix, ready=feed_ready))
    ready_wait = asyncio.create_task(feed_ready.wait())
    await asyncio.wait({feed, ready_wait}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    ready_wait.cancel()
    return feed


async def _start_children(env: dict[str, str], procs: list[Process]) -> list[str]:
    """Start every child process that is installed, appending each to ``procs``; their names."""
    names: list[str] = []
    for command, module in _CHILDREN:
        if importlib.util.find_spec(module) is None:
            continue
        names.append(command)
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "connectors.cli",
                command,
                env=env,
                preexec_fn=die_with_parent,
                # Ctrl-C reaches only `dev`, which stops the children with SIGTERM in order
                start_new_session=True,
            )
        )
    return names


def _print_welcome(bootstrap: str, bridge_url: str, token: str, env: dict[str, str]) -> None:
    print(
        "\n"
        f"  synctrail is running (embedded broker on {bootstrap}).\n"
        f"  Bridge:  {bridge_url}   (POST /v1/sync, /v1/sync/{{ns}}/{{app}})\n"
        f"  Token:   {token}\n"
        f"  Worker:  http://127.0.0.1:{env.get('SYNCTRAIL_WORKER_WEB_PORT', '6066')}/apps/guestbook\n"
        f"  Metrics: http://127.0.0.1:{env.get('SYNCTRAIL_EXPORTER_PORT', '9108')}/metrics\n\n"
        "  Post the example payloads from another terminal:\n"
        f"    .venv/bin/synctrail replay --url {bridge_url} --token {token} {EXAMPLES}\n"
        "  Watch the deployments topic:\n"
        f"    SYNCTRAIL_KAFKA_BOOTSTRAP={bootstrap} .venv/bin/synctrail tail deployments "
        "--from-beginning --follow\n\n"
        "  Ctrl-C stops everything.\n",
        flush=True,
    )


async def _watch(names: list[str], procs: list[Process], feed: asyncio.Task[None] | None) -> int:
    """Until Ctrl-C (0) or a child exits (1); says so if the event lines stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        exited = [name for name, p in zip(names, procs, strict=True) if p.returncode is not None]
        if exited:
            print(f"synctrail dev: {exited[0]} exited; stopping everything", flush=True)
            return 1
        if feed is not None and feed.done():
            error = None if feed.cancelled() else feed.exception()
            print(f"synctrail dev: the event lines stopped ({error!r})", flush=True)
            feed = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    return 0


async def _stop(feed: asyncio.Task[None] | None, procs: list[Process]) -> None:
    """Stop the event lines, then the children (SIGTERM; killed after 20 s)."""
    if feed is not None:
        feed.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await feed
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()


def run(args: argparse.Namespace) -> int:
    """Run everything until Ctrl-C."""
    settings = CommonSettings()
    logs.configure(*dev_logging(settings))
    return asyncio.run(_serve(settings))
