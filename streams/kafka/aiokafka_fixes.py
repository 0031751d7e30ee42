"""The two places synctrail reaches into aiokafka's private attributes, for processes without Faust.

aiokafka 0.14 has no public way to do either; each reach is one named function here, and
``tests/streams/test_upstream_fingerprints.py`` fingerprints the upstream source it relies on,
so that an upgrade fails there naming what to re-check (``docs/upgrading.md`` lists them).
The Faust worker's own reaches live in ``streams.faust_fixes``; this module is separate so that
the bridge, the Slack connector and the exporter use it without loading Faust.
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


async def refresh_metadata(consumer: AIOKafkaConsumer) -> None:
    """Fetch the cluster's metadata now, so that ``partitions_for_topic`` knows new topics.

    ``AIOKafkaConsumer.topics()`` fetches metadata too, but into a copy it throws away; the
    consumer's own view only changes at its next periodic refresh.
    """
    await consumer._client.force_metadata_update()


async def abort_sender(producer: AIOKafkaProducer) -> None:
    """Cancel the producer's sender task, so that its queued batches are never sent.

    ``AIOKafkaProducer.stop()`` first waits for the queued batches to be delivered; call this
    before it when those batches must be dropped instead (``stop()`` then closes the rest).
    """
    sender = producer._sender
    if sender is not None:
        await sender.close()
