"""What the Kafka-protocol broker in front of us can do, found by asking it.

Two questions matter to synctrail's producers:

* **Idempotence** (``enable_idempotence``: the broker de-duplicates a producer's retried
  batches by producer id and sequence number, so a retry cannot duplicate or reorder a
  record). Apache Kafka has it; the embedded broker (Tansu 0.6, memory storage) has not. Its
  ApiVersions answer lists InitProducerId (versions 0-5) all the same, and the request then
  fails with error -1 (UNKNOWN_SERVER_ERROR), so support is found by *trying*: one
  non-transactional InitProducerId request, which allocates a producer id and nothing else.
* **Forgetting topics** on restart: the embedded broker keeps everything in memory. It runs
  with cluster id ``synctrail-embedded`` (:class:`connectors.broker.EmbeddedBroker`), and a
  Tansu started by hand answers ``tansu_cluster`` (its default, memory storage). Only there
  does the bridge re-create a topic that went missing; on any other broker a missing topic is
  an operator's error, reported and not papered over.

``SYNCTRAIL_KAFKA_IDEMPOTENCE`` (``auto``, ``on``, ``off``) picks idempotence;
:func:`use_idempotence` turns it and the probe into a yes or no.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Literal

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.transaction import InitProducerIdRequest

from streams.kafka.client import Connection, connection

log = logging.getLogger(__name__)

Idempotence = Literal["auto", "on", "off"]

#: Cluster ids of brokers that keep topics in memory only (forget them when restarted).
EMBEDDED_CLUSTER_IDS = frozenset({"synctrail-embedded", "tansu_cluster"})


@dataclass(frozen=True, slots=True)
class BrokerFeatures:
    """The answers of one broker cluster."""

    cluster_id: str | None
    idempotence: bool
    #: why idempotence is off (the broker's error), for the log; ``None`` when it is on
    idempotence_error: str | None = None

    @property
    def forgets_topics(self) -> bool:
        """True for the embedded broker: its topics vanish when it restarts."""
        return self.cluster_id in EMBEDDED_CLUSTER_IDS


async def probe(target: Connection, *, timeout_s: float = 10.0) -> BrokerFeatures:
    """Ask the cluster (settings with their security, or a plaintext bootstrap) for its id and
    whether it gives out producer ids.

    Raises :class:`KafkaError`, :class:`OSError` or :class:`TimeoutError` when the cluster does
    not answer at all.
    """
    request_ms = int(timeout_s * 1000)
    admin = AIOKafkaAdminClient(**connection(target), request_timeout_ms=request_ms)
    client = AIOKafkaClient(**connection(target), request_timeout_ms=request_ms)
    try:
        async with asyncio.timeout(timeout_s * 3):
            await admin.start()
            cluster = await admin.describe_cluster()
            await client.bootstrap()
            node_id = client.get_random_node()
            if node_id is None:
                raise KafkaError("no broker in the cluster's metadata")
            code = await _init_producer_id(client, node_id, timeout_s)
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
        with contextlib.suppress(Exception):
            await client.close()
    # a retriable error (a broker just started, whose producer id manager is still loading)
    # still means the broker has the feature: the producer retries until it gets its id
    supported = code == 0 or for_code(code).retriable
    return BrokerFeatures(
        cluster_id=cluster.get("cluster_id"),
        idempotence=supported,
        idempotence_error=None if supported else f"InitProducerId answered error {code}",
    )


async def _init_producer_id(client: AIOKafkaClient, node_id: int, timeout_s: float) -> int:
    """The error code of a non-transactional InitProducerId request; retriable errors are
    retried for up to ``timeout_s`` (a broker that just started answers
    COORDINATOR_LOAD_IN_PROGRESS for a few seconds), then the last one is returned."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = await client.send(
            node_id, InitProducerIdRequest(transactional_id=None, transaction_timeout_ms=60000)
        )
        code = int(answer.error_code)
        if code == 0 or not for_code(code).retriable or time.monotonic() > deadline:
            return code
        await asyncio.sleep(0.1)


#: The worker's fetch wait where the broker answers long polls only at their deadline.
EMBEDDED_FETCH_WAIT_MS = 25
#: Apache Kafka answers a long poll as soon as records arrive: Kafka's own default then.
KAFKA_FETCH_WAIT_MS = 500


def fetch_wait_ms(setting: int | None, features: BrokerFeatures | None) -> int:
    """The worker's fetch wait: the setting when given, else by broker (see the constants).

    Unknown broker (the probe failed): the embedded broker's, which costs Apache Kafka only
    idle fetches, while the other way round would cost every deploy up to 500 ms.
    """
    if setting is not None:
        return setting
    if features is None or features.forgets_topics:
        return EMBEDDED_FETCH_WAIT_MS
    return KAFKA_FETCH_WAIT_MS


def use_idempotence(setting: Idempotence, features: BrokerFeatures | None) -> bool:
    """Whether producers run with ``enable_idempotence``.

    ``on`` and ``off`` are taken as they are (``on`` against a broker without it fails at
    the first produce); ``auto`` follows the probe, and is off when there was none.
    """
    if setting != "auto":
        return setting == "on"
    return features is not None and features.idempotence


async def resolve_idempotence(
    setting: Idempotence, target: Connection, *, timeout_s: float = 10.0
) -> tuple[bool, BrokerFeatures | None]:
    """Probe the broker (unless the setting decides alone) and log what was chosen.

    A broker that cannot be asked yet leaves ``auto`` off, with a warning: the producer is
    then correct, only without de-duplication of its retries.
    """
    features: BrokerFeatures | None = None
    try:
        if setting == "auto":  # `on` and `off` need no answer from the broker
            features = await probe(target, timeout_s=timeout_s)
    except (KafkaError, OSError, TimeoutError) as exc:
        if setting == "auto":
            log.warning(
                "could not ask the broker whether it supports idempotent producers; "
                "producing without idempotence",
                extra={"error": f"{type(exc).__name__}: {exc}"},
            )
    enabled = use_idempotence(setting, features)
    if enabled:
        log.info("producing with idempotence", extra={"setting": setting})
    elif setting == "auto" and features is not None:
        log.info(
            "the broker has no idempotent producers; producing without (SYNCTRAIL_KAFKA_IDEMPOTENCE)",
            extra={"cluster_id": features.cluster_id, "reason": features.idempotence_error},
        )
    return enabled, features
