"""The embedded broker: starts, creates topics, stops, and never outlives its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from connectors.broker import EmbeddedBroker, wait_until_ready
from streams.kafka.setup import ensure_topics
from streams.kafka.topics import ALL_TOPICS
from tests.support import produce, read_topic


async def test_topics_are_created_once_with_the_configured_partitions(broker, prefix):
    created = await ensure_topics(broker.bootstrap, prefix, partitions=3)
    assert sorted(created) == sorted(spec.address(prefix) for spec in ALL_TOPICS)
    assert await ensure_topics(broker.bootstrap, prefix, partitions=3) == []
    topic = f"{prefix}deployments"
    await produce(broker.bootstrap, topic, [(f"k{i}".encode(), b"{}") for i in range(30)])
    records = await read_topic(broker.bootstrap, topic)
    assert len(records) == 30
    assert {r.partition for r in records} <= {0, 1, 2}


def test_broker_dies_with_a_sigkilled_parent(tmp_path):
    script = (
        "import time\n"
        "from connectors.broker import EmbeddedBroker\n"
        "b = EmbeddedBroker()\n"
        "b.start_sync()\n"
        "print(b.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=os.getcwd()
    )
    assert parent.stdout is not None
    broker_pid = int(parent.stdout.readline())
    os.kill(broker_pid, 0)  # alive while the parent lives
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(broker_pid, 0)
        except ProcessLookupError:
            break
        # reap if it became our zombie (it is not our child, so this is only a poll interval)
        time.sleep(0.05)
    else:
        os.kill(broker_pid, signal.SIGKILL)
        raise AssertionError("broker outlived its SIGKILLed parent")


async def test_start_failure_names_the_problem_and_shows_the_log(broker):
    # A second broker on a taken port cannot listen; the error must say so.
    second = EmbeddedBroker(port=broker.port)
    try:
        await second.start(deadline_s=3)
    except Exception as exc:
        text = str(exc)
        assert "embedded broker" in text and "tail of" in text
    else:  # pragma: no cover
        second.stop()
        raise AssertionError("a broker on a taken port must not report ready")
    await wait_until_ready(broker.bootstrap, 5)  # the first one is unharmed
