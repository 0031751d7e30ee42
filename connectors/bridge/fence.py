"""The spool's fence: records whose produce failed but that the broker appended all the same.

When the bridge gives up on a produce (no acknowledgement in time), it spools the record and
abandons the producer. The request may still have reached the broker: a leader killed after
its followers copied the batch but before it answered (the new leader has the batch), or a
stalled broker that wakes up and handles what waited in its socket. Draining the spool would
append such a record a second time (37 duplicates in a 6,000-delivery leader kill on the
3-node Apache Kafka cluster; idempotence does not help, since the drain runs on a new producer
with a new producer id).

So the bridge remembers, per partition, the offset after its last acknowledged record, and
which partitions had a batch in the broker's hands when it gave up. Before draining, it reads
those partitions from there to their end and notes the records it finds (key and value bytes:
a value carries its delivery id, so equal bytes are the same delivery); the drain then commits
a spooled record found there without sending it again. The original is in the log before
every later record of its app, so per-app order holds too.

The read is retried at each reconnection while it fails for a passing reason (a killed
leader's partitions have none until the controller fences it, ~9 s on Apache Kafka's
defaults), for up to ``give_up_s``; the spool waits meanwhile.

Limits: a record the broker appends after this read (a stalled broker's old connection handled
after the new one's fetch) is still duplicated; a partition that never had an acknowledgement
in this process is read over its last ``TAIL`` records only; a bridge that cannot read the
topic (no Read permission), or not within ``give_up_s``, drains without the fence, as before
(it logs that).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    UnsupportedVersionError,
)

from streams.kafka.client import Connection, connection
from streams.kafka.offsets import log_end_offsets, read_to_end

log = logging.getLogger(__name__)

#: errors that another try will not mend; anything else (timeouts, no leader, connections
#: refused) is retried until ``give_up_s``
_LASTING = (
    TopicAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    SaslAuthenticationFailed,
    UnsupportedVersionError,
)

TAIL = 20_000  # records read back on a partition without a known acknowledged offset


class Fence:
    """Offsets acknowledged, partitions in doubt, and the records found there."""

    def __init__(self, give_up_s: float = 60.0) -> None:
        self.give_up_s = give_up_s
        self._since: float | None = None  # time.monotonic() of the first failed read
        self._next: dict[int, int] = {}  # partition -> offset after the last acknowledged one
        self._doubt: dict[int, int | None] = {}  # partition -> first offset in doubt
        # digests, not the records: a read-back may hold TAIL records of a few KB each
        self._landed: set[bytes] = set()

    @property
    def in_doubt(self) -> bool:
        """True while partitions wait to be read back before the next drain."""
        return bool(self._doubt)

    def acknowledged(self, partition: int, last_offset: int) -> None:
        """The broker acknowledged records of ``partition`` up to ``last_offset``."""
        if last_offset >= self._next.get(partition, 0):
            self._next[partition] = last_offset + 1

    def doubt(self, partitions: Iterable[int]) -> None:
        """Batches of ``partitions`` were in the broker's hands when their produce failed."""
        for partition in partitions:
            start = self._next.get(partition)
            known = self._doubt.get(partition, start)
            self._doubt[partition] = None if start is None or known is None else min(start, known)

    def landed(self, key: bytes | None, value: bytes) -> bool:
        """True if this spooled record is on the topic already (found by :meth:`read_back`)."""
        return _digest(key, value) in self._landed

    def forget(self) -> None:
        """The spool is empty: what was found is of no further use."""
        self._landed.clear()

    async def read_back(self, target: Connection, topic: str, timeout_s: float) -> bool:
        """Read the partitions in doubt to their end. False when that failed for a passing
        reason: try again later, and do not drain before. True once read, or given up on (a
        lasting error, or ``give_up_s`` of failures: the drain then goes ahead unfenced)."""
        doubt = dict(self._doubt)
        started = time.monotonic()
        consumer = AIOKafkaConsumer(
            **connection(target),  # the bridge's settings, with their security
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id="synctrail-bridge-fence",
            request_timeout_ms=int(timeout_s * 1000),
        )
        found = 0
        try:
            async with asyncio.timeout(timeout_s * 3):
                await consumer.start()
                tps = [TopicPartition(topic, p) for p in sorted(doubt)]
                consumer.assign(tps)
                ends = await log_end_offsets(consumer, tps)
                for tp in tps:
                    start = doubt[tp.partition]
                    consumer.seek(tp, max(0, ends[tp] - TAIL) if start is None else start)
                async for records in read_to_end(consumer, tps, ends=ends, fetch_ms=200):
                    for record in records:
                        if record.value is not None:
                            self._landed.add(_digest(record.key, record.value))
                            found += 1
        except (KafkaError, OSError, TimeoutError) as exc:
            now = time.monotonic()
            self._since = now if self._since is None else self._since
            if not isinstance(exc, _LASTING) and now - self._since < self.give_up_s:
                return False
            log.warning(
                "could not read back the topic before draining; records whose produce "
                "failed may be appended twice",
                extra={"topic": topic, "error": f"{type(exc).__name__}: {exc}"},
            )
            self._since = None
            for partition in doubt:
                self._doubt.pop(partition, None)
            return True
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
        self._since = None
        for partition in doubt:
            self._doubt.pop(partition, None)
        log.info(
            "read back the partitions in doubt before draining",
            extra={
                "partitions": sorted(doubt),
                "records": found,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return True


def _digest(key: bytes | None, value: bytes) -> bytes:
    """128 bits that stand for a record's key and value (equal records, equal digests)."""
    digest = hashlib.blake2b(key or b"", digest_size=16)
    digest.update(len(key or b"").to_bytes(4, "big"))  # no key/value boundary ambiguity
    digest.update(value)
    return digest.digest()
