"""The worker process: heap handling after a rebalance."""

from __future__ import annotations

import gc

from streams.worker import freeze_heap


def test_objects_alive_after_a_rebalance_are_exempt_from_later_full_collections():
    gc.unfreeze()
    survivor = {"long": ["lived"]}
    try:
        freeze_heap(None, signal=None)  # type: ignore[arg-type]
        assert gc.get_freeze_count() > 0
        # frozen objects are in the permanent generation, which collections never scan
        assert not any(obj is survivor for obj in gc.get_objects())
    finally:
        gc.unfreeze()
    assert any(obj is survivor for obj in gc.get_objects())
