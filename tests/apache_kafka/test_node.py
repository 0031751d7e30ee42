"""The Apache Kafka test node: answers, keeps its log across a restart, never outlives the
tests, and says what is missing when it cannot start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.apache_kafka import node as kafka_node
from tests.apache_kafka.node import KafkaNode, KafkaNotInstalled
from tests.support import REPO, produce, read_topic


async def test_a_restarted_node_keeps_its_records(tmp_path):
    node = KafkaNode(tmp_path / "node")
    await node.start()
    try:
        await produce(node.bootstrap, "kept", [(b"k", b'"before"')])
        node.stop()  # controlled shutdown
        assert not node.is_running()
        await node.start()
        records = await read_topic(node.bootstrap, "kept", timeout=10)
        assert [r.value for r in records] == ["before"]
    finally:
        node.stop()


def test_node_dies_with_a_sigkilled_parent(tmp_path):
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from tests.apache_kafka.node import KafkaNode\n"
        "n = KafkaNode(Path(sys.argv[1]))\n"
        "n.start_sync()\n"
        "print(n.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "node")], stdout=subprocess.PIPE, cwd=REPO
    )
    assert parent.stdout is not None
    jvm = int(parent.stdout.readline())
    os.kill(jvm, 0)  # alive while the parent lives
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(jvm, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)  # a poll interval: it is not our child, so nothing to wait on
    os.kill(jvm, signal.SIGKILL)
    raise AssertionError("the Kafka JVM outlived its SIGKILLed parent")


def test_missing_jars_name_the_make_target(tmp_path, monkeypatch):
    monkeypatch.setattr(kafka_node, "JARS", tmp_path / "nowhere")
    with pytest.raises(KafkaNotInstalled, match="make kafka-jars"):
        kafka_node.classpath()
