"""``synctrail dev``: one readable line per decision, text logs at WARNING from the children.

The last test runs the real ``synctrail dev`` (embedded broker, bridge, worker, Slack console,
exporter) on free ports, posts one example payload and stops it with SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from connectors import dev, dev_feed
from connectors.broker import EmbeddedBroker, free_port
from streams import logs
from streams.kafka.topics import DEPLOYMENTS, METRICS
from streams.settings import CommonSettings
from tests.support import REPO, Service, produce, wait_for

GUESTBOOK = REPO / "examples" / "payloads" / "01-guestbook-rev-a.json"


def _deployment(**fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "app": "guestbook",
        "app_namespace": "argocd",
        "revision": "00c875f3d9a1b2c4e5f60718293a4b5c6d7e8f90",
        "revisions": [],
        "operation": {"phase": "Succeeded", "message": "successfully synced"},
        "initial": False,
        "rollback": False,
        "images": ["docker.io/library/redis:7.2.4", "ghcr.io/acme/guestbook-ui:v1.5.0"],
        "images_added": [],
        "images_removed": [],
        "images_changed": [],
        "violations": [],
    }
    record.update(fields)
    return record


def test_a_deploy_is_one_line_with_its_image_changes_and_short_digests() -> None:
    digest_a, digest_b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    record = _deployment(
        images_changed=[
            {
                "repository": "ghcr.io/acme/guestbook-ui",
                "from": "ghcr.io/acme/guestbook-ui:v1.4.0",
                "to": "ghcr.io/acme/guestbook-ui:v1.5.0",
            },
            {
                "repository": "registry.local:5000/payments/api",
                "from": f"registry.local:5000/payments/api@{digest_a}",
                "to": f"registry.local:5000/payments/api@{digest_b}",
            },
        ],
        images_added=["docker.io/envoyproxy/envoy:v1.30.1"],
    )
    assert dev_feed.deployment_lines(record) == [
        "guestbook deployed 00c875f: 2 images changed, 1 image added (guestbook-ui v1.4.0 → "
        "v1.5.0, api @sha256:aaaaaaaaaaaa… → @sha256:bbbbbbbbbbbb…, +envoy:v1.30.1)"
    ]


def test_first_deploys_rollbacks_and_failures_say_so() -> None:
    first = dev_feed.deployment_lines(_deployment(initial=True))
    assert first == ["guestbook first deploy 00c875f: 2 images (redis:7.2.4, guestbook-ui:v1.5.0)"]
    removed = _deployment(rollback=True, images_removed=["docker.io/envoyproxy/envoy:v1.30.1"])
    assert dev_feed.deployment_lines(removed) == [
        "guestbook rolled back to 00c875f: 1 image removed (-envoy:v1.30.1)"
    ]
    assert dev_feed.deployment_lines(_deployment()) == [
        "guestbook deployed 00c875f: no image changed (2 running)"
    ]
    failed = _deployment(operation={"phase": "Failed", "message": "webhook\n denied   it"})
    assert dev_feed.deployment_lines(failed) == [
        "guestbook sync Failed at 00c875f: webhook denied it"
    ]


def test_violations_get_a_line_of_their_own_red_on_a_terminal() -> None:
    record = _deployment(
        images_added=["registry.evil/miner:1"],
        violations=[
            {
                "rule": "denylist",
                "rule_id": "r1",
                "image": "registry.evil/miner:1",
                "reason": "miner",
            }
        ],
    )
    value = orjson.loads(orjson.dumps(record))
    plain = dev_feed.event_lines(DEPLOYMENTS.name, value, 0.0)
    assert len(plain) == 2 and plain[0].endswith("1 image added (+miner:1)")
    assert plain[1].strip() == "⚠ denylist: registry.evil/miner:1 — miner"
    colored = dev_feed.event_lines(DEPLOYMENTS.name, value, 0.0, color=True)
    assert colored[0] == plain[0], "only the violation is highlighted"
    assert colored[1].startswith("\x1b[1;31m") and colored[1].endswith("\x1b[0m")


def test_events_not_announced_are_one_short_line_and_announced_metrics_none() -> None:
    def line(kind: str) -> list[str]:
        return dev_feed.event_lines(METRICS.name, {"kind": kind, "app": "argocd/guestbook"}, 0.0)

    assert line("duplicate")[0].endswith(" guestbook duplicate, not announced")
    assert "stale" in line("stale")[0] and "resync" in line("resync")[0]
    assert "dead-lettered" in line("dead_letter")[0]
    # the deployment record says these with more detail
    assert line("deployment") == [] and line("violation") == []
    assert dev_feed.event_lines(METRICS.name, None, 0.0) == []


def test_text_log_lines_carry_the_extra_fields(capsys: Any) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure("WARNING", "text")
        log = logging.getLogger("synctrail.test")
        log.info("not shown")
        log.warning("broker slow", extra={"broker": "127.0.0.1:9092", "waited_s": 3})
        err = capsys.readouterr().err
        assert "not shown" not in err
        assert err.rstrip().endswith(
            "WARNING synctrail.test broker slow broker=127.0.0.1:9092 waited_s=3"
        )
        assert not err.startswith("{")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def test_children_log_text_at_warning_unless_the_settings_say_otherwise(
    monkeypatch: Any, tmp_path: Path
) -> None:
    for name in ("SYNCTRAIL_LOG_LEVEL", "SYNCTRAIL_LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)

    env_file = tmp_path / "synctrail.env"
    env_file.write_text("")

    def child() -> tuple[str, str]:
        # SYNCTRAIL_ENV_FILE is read once, at import: give the settings the file directly
        settings = CommonSettings(_env_file=env_file)
        env = dev._child_env("127.0.0.1:9092", "token", settings)
        return env["SYNCTRAIL_LOG_LEVEL"], env["SYNCTRAIL_LOG_FORMAT"]

    assert child() == ("WARNING", "text")
    env_file.write_text("SYNCTRAIL_LOG_LEVEL=ERROR\n")
    assert child() == ("ERROR", "text"), "the env file's level is kept"
    monkeypatch.setenv("SYNCTRAIL_LOG_LEVEL", "INFO")
    monkeypatch.setenv("SYNCTRAIL_LOG_FORMAT", "json")
    assert child() == ("INFO", "json"), "the environment wins"


async def test_the_feed_prints_records_written_after_it_started(
    broker: EmbeddedBroker, topics: str
) -> None:
    old = orjson.dumps(_deployment(app="before-start"))
    await produce(broker.bootstrap, DEPLOYMENTS.address(topics), [(b"argocd/x", old)])
    out = io.StringIO()
    ready = asyncio.Event()
    task = asyncio.create_task(dev_feed.feed(broker.bootstrap, topics, out=out, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 30)
        await produce(
            broker.bootstrap,
            DEPLOYMENTS.address(topics),
            [(b"argocd/guestbook", orjson.dumps(_deployment()))],
        )
        duplicate = {"kind": "duplicate", "app": "argocd/guestbook"}
        await produce(
            broker.bootstrap,
            METRICS.address(topics),
            [(b"argocd/guestbook", orjson.dumps(duplicate))],
        )
        await wait_for(lambda: len(out.getvalue().splitlines()) >= 2, what="two lines")
        lines = out.getvalue().splitlines()
        # two topics: no order between them
        assert sorted(line.split(" ", 1)[1] for line in lines) == [
            "guestbook deployed 00c875f: no image changed (2 running)",
            "guestbook duplicate, not announced",
        ]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _descendants(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    if int(child) not in found:
                        found.add(int(child))
                        todo.append(int(child))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_dev_prints_a_readable_line_per_event_and_no_json_then_stops_everything(
    tmp_path: Path,
) -> None:
    ports = {
        name: str(free_port())
        for name in (
            "SYNCTRAIL_BRIDGE_PORT",
            "SYNCTRAIL_WORKER_WEB_PORT",
            "SYNCTRAIL_EXPORTER_PORT",
            "SYNCTRAIL_SLACK_METRICS_PORT",
        )
    }
    env = {
        **ports,
        "SYNCTRAIL_WORKER_DATA_DIR": str(tmp_path / "worker"),
        "SYNCTRAIL_BRIDGE_SPOOL_DIR": str(tmp_path / "spool"),
        "SYNCTRAIL_BRIDGE_TOKENS": "dev-test-token",
        # console mode: the Slack messages go to dev's terminal
        "SYNCTRAIL_SLACK_TOKEN": "",
        "SYNCTRAIL_SLACK_WEBHOOK_URL": "",
    }
    service = Service(["dev"], env, tmp_path / "dev.log")
    for name in ("SYNCTRAIL_LOG_LEVEL", "SYNCTRAIL_LOG_FORMAT"):
        service.env.pop(name, None)
    service.start()
    assert service.process is not None
    try:
        await wait_for(
            lambda: "synctrail is running" in service.log(), timeout=120, what="dev ready"
        )
        children = _descendants(service.process.pid)
        assert len(children) >= 5, "broker, bridge, worker, slack, exporter"
        url = f"http://127.0.0.1:{ports['SYNCTRAIL_BRIDGE_PORT']}/v1/sync"
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                url,
                data=GUESTBOOK.read_bytes(),
                headers={
                    "Authorization": "Bearer dev-test-token",
                    "Content-Type": "application/json",
                },
            ) as response,
        ):
            assert response.status == 202
        await wait_for(
            lambda: "guestbook first deploy c80b448: 2 images" in service.log(),
            timeout=120,
            what="the readable line",
        )
        await wait_for(
            lambda: "#deployments" in service.log(), timeout=60, what="the Slack console message"
        )
        service.process.send_signal(signal.SIGINT)
        try:
            code = await asyncio.to_thread(service.process.wait, 60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"dev did not stop on SIGINT:\n{service.log()[-3000:]}") from None
        assert code == 0
        await wait_for(
            lambda: not any(_alive(pid) for pid in children),
            timeout=30,
            what="every child gone",
        )
        json_lines = [line for line in service.log().splitlines() if line.startswith("{")]
        assert json_lines == [], "children log text at WARNING under dev"
    finally:
        if service.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.process.pid, signal.SIGKILL)
            service.process.wait(10)
